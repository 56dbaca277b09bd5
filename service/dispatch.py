"""Handing jobs to the broker, by lane: interactive jobs in tasks of up to MAX_BATCH at once, bulk jobs cut into
chunks of MAX_BATCH that go through their key's fair share (service/fairshare.py).

Whoever releases a chunk sends it, and a chunk whose send fails goes back to its key's pending list, so that no chunk
is left counted in flight with no task (its key's turn would never come back).
"""

import uuid
from collections.abc import Sequence

from celery import Celery

from service.fairshare import Chunk, FairShare
from service.jobstore import Lane
from service.queue import send_classify_task


def enqueue_bulk(job_ids: Sequence[str], *, owner: str, fair_share: FairShare, window: int, chunk_size: int,
                 app: Celery) -> None:
    """Cut an owner's bulk jobs into chunks of `chunk_size`, hand them to fair share, and send the ones it releases
    now; the others go as the owner's earlier chunks finish."""
    chunks = [Chunk(id=str(uuid.uuid4()), job_ids=list(job_ids[start:start + chunk_size]))
              for start in range(0, len(job_ids), chunk_size)]
    send_bulk_chunks(fair_share.admit(owner, chunks, window=window), owner=owner, fair_share=fair_share, app=app)


def send_bulk_chunks(chunks: Sequence[Chunk], *, owner: str, fair_share: FairShare, app: Celery) -> None:
    """Enqueue the bulk chunks fair share released for `owner`; each task names its chunk, so that its worker
    releases the owner's next one when it is done. If a send fails, the chunks not sent go back to the owner's
    pending list and the error is raised."""
    for sent, chunk in enumerate(chunks):
        try:
            send_classify_task(chunk.job_ids, app=app, lane=Lane.BULK, chunk=chunk.id, owner=owner)
        except BaseException:
            fair_share.put_back(owner, [unsent.id for unsent in chunks[sent:]])
            raise
