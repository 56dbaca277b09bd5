"""Jobs stored by the node go to fair share in chunks of one owner's jobs (dicomnode/gatherer.py)."""

import time

from dicomnode.gatherer import ChunkGatherer


def test_an_owner_s_jobs_go_as_a_full_chunk_at_once_and_the_rest_after_the_wait():
    sent: list[tuple[str, list[str], float]] = []
    gatherer = ChunkGatherer(lambda owner, jobs: sent.append((owner, jobs, time.monotonic())), max_batch=4, wait=0.3)
    started = time.monotonic()

    for n in range(6):
        gatherer.add("dicom:CR1", f"cr-{n}")
    gatherer.add("dicom:DX2", "dx-0")
    assert [(owner, jobs) for owner, jobs, _ in sent] == [("dicom:CR1", ["cr-0", "cr-1", "cr-2", "cr-3"])]
    time.sleep(0.5)

    assert sorted((owner, jobs) for owner, jobs, _ in sent[1:]) == [("dicom:CR1", ["cr-4", "cr-5"]),
                                                                   ("dicom:DX2", ["dx-0"])]
    assert all(0.3 <= at - started < 0.45 for _, _, at in sent[1:])
    gatherer.add("dicom:CR1", "cr-6")
    gatherer.close()  # what is gathered goes at once
    assert sent[-1][:2] == ("dicom:CR1", ["cr-6"])
