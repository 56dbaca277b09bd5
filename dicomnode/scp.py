"""The node's Application Entity: Verification and Storage SCP (pynetdicom), what it accepts, and whom.

pynetdicom runs each association on a thread of its own and calls the handlers there. With
STORE_RECV_CHUNKED_DATASET, it writes each C-STORE's data set to a temporary file as it arrives, and calls the
C-STORE handler only once the whole instance is in: an association holds at most the instance it is storing in
memory, and an association aborted mid-instance leaves nothing to store. Each association reads its PDUs whole
(dicomnode/reading.py), not 4 KiB at a time.
"""

import contextlib
import logging
import os
from pathlib import Path

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # built at import

from dicomnode.intake import Intake
from dicomnode.peers import PeerAllowList
from dicomnode.reading import read_whole_pdus
from pneuradnet.dicomidentity import CLASSIFIABLE_CLASSES, decodable_transfer_syntaxes

log = logging.getLogger(__name__)

MAX_PDU_SIZE = 1024 * 1024
"""Largest PDU the node receives. pynetdicom's default (16 KiB) made 32 DX instances of 15 MB over 4 associations
take 2.7-3.3 s; 1 MiB, 1.8-2.0 s (an unbounded size was no faster, and would let a peer make the node hold a PDU
of any size)."""

REJECTED_PERMANENT = 0x01
SERVICE_USER = 0x01
CALLING_AE_TITLE_NOT_RECOGNISED = 0x03


def application_entity(ae_title: str) -> AE:
    """The AE, offering Verification and the accepted storage classes in every transfer syntax pneuradnet
    decodes."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = MAX_PDU_SIZE
    ae.require_called_aet = True  # a sender that means another AE is told so, not filed here
    ae.add_supported_context(Verification)
    syntaxes = decodable_transfer_syntaxes()
    for sop_class in CLASSIFIABLE_CLASSES:  # any other class is refused in its presentation context
        ae.add_supported_context(sop_class, syntaxes)
    return ae


def handlers(intake: Intake, peers: PeerAllowList) -> list[evt.EventHandlerType]:
    def on_requested(event: evt.Event) -> None:
        requestor = event.assoc.requestor
        assert requestor.primitive is not None  # the A-ASSOCIATE request this event is about
        calling = requestor.primitive.calling_ae_title  # requestor.ae_title is set only after this event
        if not peers.allows(calling, requestor.address):
            log.warning("association from %s@%s rejected: not in DICOM_ALLOWED_PEERS", calling, requestor.address)
            event.assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_TITLE_NOT_RECOGNISED)
            event.assoc.kill()  # as pynetdicom's own rejections do: waits until the A-ASSOCIATE-RJ has gone out

    def on_store(event: evt.Event) -> int:
        return intake.receive(Path(event.dataset_path), calling_ae_title=event.assoc.requestor.ae_title)

    def on_close(event: evt.Event) -> None:
        # An association that ends mid-instance (aborted, its connection lost) leaves the part received in its
        # temporary file, which pynetdicom deletes only after a C-STORE handler ran (pinned: pynetdicom 3.0).
        partial = getattr(event.assoc.dimse.message, "_data_set_file", None)
        if partial is not None:
            partial.close()
            with contextlib.suppress(OSError):
                os.unlink(partial.name)

    return [(evt.EVT_CONN_OPEN, read_whole_pdus), (evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, on_store),
            (evt.EVT_CONN_CLOSE, on_close)]
