"""`python -m dicomnode`: the DICOM node on DICOM_PORT as DICOM_AE_TITLE, until SIGTERM or SIGINT."""

import logging
import signal
import threading
from types import FrameType

from dicomnode.intake import Intake
from dicomnode.peers import PeerAllowList
from dicomnode.scp import application_entity, handlers
from service.fairshare import FairShare
from service.images import images_for
from service.jobstore import JobStore
from service.logs import configure_logging
from service.queue import make_celery
from service.settings import get_settings
from service.studies import StudyGroups
from service.workers import WorkerRegistry

log = logging.getLogger("dicomnode")

CLOSER_INTERVAL = 1.0
"""Seconds between two looks for quiet studies: a study closes at most this late, and each look tells the
reconciler the open ones are alive (its stalled-admission rule waits 30 s)."""


def close_quiet_studies(studies: StudyGroups, stop: threading.Event, *, interval: float) -> None:
    while not stop.wait(interval):
        try:
            for batch_id in studies.close_quiet():
                log.info("study batch %s closed: no new instance for DICOM_STUDY_TIMEOUT", batch_id)
            studies.keep_open()
        except Exception as error:  # Redis away: the next look tries again; nothing is lost meanwhile
            log.warning("quiet studies were not closed this time: %s", error)


def main() -> None:
    settings = get_settings()
    configure_logging(level=settings.log_level, json_lines=settings.log_format == "json")
    # pynetdicom logs each association and message at INFO: UIDs and AE titles, and at DEBUG whole data sets.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    peers = PeerAllowList.parse(settings.dicom_allowed_peers)
    celery = make_celery(settings)
    store = JobStore(settings.redis_url, ttl=settings.job_ttl, budget_bytes=settings.redis_budget_bytes)
    images = images_for(settings, store)
    studies = StudyGroups(settings.redis_url, store, quiet=settings.dicom_study_timeout)
    fair_share = FairShare(settings.redis_url, ttl=settings.job_ttl)
    workers = WorkerRegistry(settings.redis_url)
    intake = Intake(store=store, images=images, studies=studies, fair_share=fair_share, workers=workers,
                    celery=celery, max_queue=settings.max_queue, max_batch=settings.max_batch,
                    results_to=settings.dicom_results_to, results_stow_url=settings.dicom_results_stow_url,
                    explain=settings.dicom_explain)

    ae = application_entity(settings.dicom_ae_title)
    server = ae.start_server(("0.0.0.0", settings.dicom_port), block=False, evt_handlers=handlers(intake, peers))
    assert server is not None  # block=False: the server, running on its own thread
    stop = threading.Event()
    closer = threading.Thread(target=close_quiet_studies, args=(studies, stop), kwargs={"interval": CLOSER_INTERVAL},
                              name="study-closer", daemon=True)
    closer.start()
    if peers.open:
        log.warning("DICOM_ALLOWED_PEERS is not set: any calling AE title, from any host, may send to this node")
    else:
        log.info("DICOM peers allowed: %s", ", ".join(peer.ae_title for peer in peers.peers))
    log.info("DICOM node %s listening on port %d (studies close after %g s without a new instance)",
             settings.dicom_ae_title, settings.dicom_port, settings.dicom_study_timeout)

    def shut_down(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    stop.wait()
    # Associations in progress are ended; an instance not acknowledged is the sender's to send again. Studies left
    # open are closed by another node, or by this one when it is back.
    server.shutdown()
    intake.close()
    closer.join()
    for resource in (studies, fair_share, workers, images, store):
        resource.close()
    celery.close()
    log.info("DICOM node stopped")


if __name__ == "__main__":
    main()
