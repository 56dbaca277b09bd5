"""Grouping a DICOM study's instances into one batch, in Redis, so that any node process may receive any instance.

A study is open while its instances keep coming: the first instance opens a batch (total 0, grown by one job per
instance: JobStore.grow_batch) and names it in `dicom:study:{uid}`; each instance pushes the study's closing time,
in `dicom:studies`, DICOM_STUDY_TIMEOUT past its arrival. Every node closes, in turn, the studies whose time has
come and none of whose instances is being stored (`close_quiet`), and keeps the others' admissions alive for the
reconciler (`keep_open`); the reconciler closes quiet studies too, so that they close with no node left, and its
stalled-admission rule frees a study whose instance a dead node left half-stored.

An instance never joins a batch whose admission is closing: growing a batch checks, in the same script, that the
study still names it (JobStore.grow_batch, `only_if`), and taking a quiet study checks that no place of its batch is
reserved; whichever comes first, the other sees it. Every time compared is Redis' own.
"""

from collections.abc import Callable
from typing import cast

from service.channels import Reports
from service.connections import connect
from service.jobstore import JobStore, Lane
from service.keys import ADMISSIONS, DICOM_STUDIES, dicom_study_key
from service.scripts import NOW

_TAKE_QUIET = NOW + """
-- Takes a study whose quiet time is over out of the open studies, unless one of its instances is being stored.
-- KEYS[1] open studies (uid -> when it closes)   KEYS[2] the study's batch id   KEYS[3] admissions hash
-- ARGV[1] study uid
-- Returns the batch id whose admission is to close ('' when the study had none), or false: not quiet yet.
local closes = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not closes or tonumber(closes) > now() then return false end
local batch = redis.call('GET', KEYS[2])
if batch and redis.call('HEXISTS', KEYS[3], batch) == 1 then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return batch or ''
"""

_FORGET = """
-- Forgets a study's batch if it is still this one (its admission was closed under it: the next instance opens
-- another).
-- KEYS[1] the study's batch id   KEYS[2] open studies   ARGV[1] batch id   ARGV[2] study uid
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

_PROLONG = NOW + """
-- A study's quiet time starts again: it closes `quiet` seconds from now, unless it already closes later.
-- KEYS[1] open studies   ARGV[1] study uid   ARGV[2] quiet seconds
redis.call('ZADD', KEYS[1], 'GT', now() + tonumber(ARGV[2]), ARGV[1])
return 1
"""


class StudyGroups:
    """The open studies of the DICOM node(s), each the batch its instances go to."""

    def __init__(self, url: str, store: JobStore, *, quiet: float = 0.0) -> None:
        """`quiet`: DICOM_STUDY_TIMEOUT, the seconds without a new instance after which a study's batch closes (what
        only closes studies, as the reconciler does, needs none)."""
        self._redis = connect(url)
        self._store = store
        self._quiet = quiet
        self._take_quiet = self._redis.register_script(_TAKE_QUIET)
        self._forget = self._redis.register_script(_FORGET)
        self._prolong = self._redis.register_script(_PROLONG)

    def close(self) -> None:
        self._redis.close()

    def batch_of(self, study_uid: str, *, owner: str, reports: Callable[[], Reports | None] = lambda: None,
                 explain: bool = False) -> str:
        """The id of the open batch of the study, opened now (owned by `owner`, in the bulk lane) if it has none:
        with the reports `reports()` asks (service/channels.py, reports_asked), called only then, and with heatmap
        captures if `explain` and it asks for reports."""
        key = dicom_study_key(study_uid)
        known = cast(str | None, self._redis.get(key))
        if known is not None:
            return known
        asked = reports()
        batch, _ = self._store.open_batch(total=0, owner=owner, lane=Lane.BULK, reports=asked,
                                          explain=explain and asked is not None)
        if self._redis.set(key, batch.id, nx=True, ex=self._store.ttl):
            self.prolong(study_uid)
            return batch.id
        # Another association opened it first: this empty batch closes at once and stays empty.
        self._store.close_admission(batch.id)
        return self.batch_of(study_uid, owner=owner, reports=reports, explain=explain)

    def grow(self, study_uid: str, batch_id: str, *, job_id: str, image_bytes: int, max_queue: int) -> int:
        """Reserve a job in the study's batch (JobStore.grow_batch), if the study still names that batch; its quiet
        time starts again. AdmissionClosed if it does not (call `forget` and ask batch_of again)."""
        place = self._store.grow_batch(batch_id, job_id=job_id, image_bytes=image_bytes, max_queue=max_queue,
                                       only_if=(dicom_study_key(study_uid), batch_id))
        self.prolong(study_uid)
        return place

    def prolong(self, study_uid: str) -> None:
        self._prolong(keys=[DICOM_STUDIES], args=[study_uid, self._quiet])

    def forget(self, study_uid: str, batch_id: str) -> None:
        """The batch's admission closed under the study (the reconciler took it for stalled): the study's next
        instance opens another."""
        self._forget(keys=[dicom_study_key(study_uid), DICOM_STUDIES], args=[batch_id, study_uid])

    def close_quiet(self) -> list[str]:
        """Close the admission of every study quiet for DICOM_STUDY_TIMEOUT; the ids of the batches closed. Anyone
        may call it at any time (the nodes each second, the reconciler at each sweep, in case no node is left): each
        quiet study is closed by one caller."""
        closed = []
        for study_uid in cast(list[str], self._redis.zrangebyscore(DICOM_STUDIES, "-inf", self._store.redis_now())):
            batch_id = self._take_quiet(keys=[DICOM_STUDIES, dicom_study_key(study_uid), ADMISSIONS], args=[study_uid])
            if batch_id:
                self._store.close_admission(batch_id)
                closed.append(batch_id)
        return closed

    def keep_open(self) -> None:
        """Tell the reconciler the batches of studies within their quiet time are alive (a live node's part): if no
        node is left to say so, its stalled-admission rule closes those with an instance stuck half-stored."""
        waiting = cast(list[str], self._redis.zrangebyscore(DICOM_STUDIES, self._store.redis_now(), "+inf"))
        if waiting:
            batch_ids = cast(list[str | None], self._redis.mget([dicom_study_key(uid) for uid in waiting]))
            self._store.keep_admitting([batch_id for batch_id in batch_ids if batch_id])
