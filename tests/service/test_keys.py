from service import keys


def test_key_formats_are_pinned():
    # Deployed workers and APIs of different versions share Redis: these names are an interface.
    assert keys.job_key("j1") == "pneuradnet:job:j1"
    assert keys.image_key("j1") == "pneuradnet:job:j1:image"
    assert keys.heatmap_key("j1") == "pneuradnet:job:j1:heatmap"
    assert keys.job_channel("j1") == "pneuradnet:job:j1:events"
    assert keys.batch_key("b1") == "pneuradnet:batch:b1"
    assert keys.batch_jobs_key("b1") == "pneuradnet:batch:b1:jobs"
    assert keys.batch_channel("b1") == "pneuradnet:batch:b1:events"
    assert keys.idempotency_key("owner1", "k1") == "pneuradnet:idempotency:owner1:k1"
    assert keys.worker_key("host:42") == "pneuradnet:worker:host:42"
    assert keys.BULK_QUEUED_REGISTRY == "pneuradnet:registry:queued"
    assert keys.RUNNING_REGISTRY == "pneuradnet:registry:running"
    assert keys.METRICS == "pneuradnet:metrics"
    assert keys.INTERACTIVE_QUEUED_REGISTRY == "pneuradnet:registry:queued:interactive"
    assert keys.WORKERS == "pneuradnet:workers"
    assert keys.FAIR_OWNERS == "pneuradnet:fair:owners"
    assert keys.SWEEP_LOCK == "pneuradnet:sweep"
    assert keys.WEBHOOKS_DUE == "pneuradnet:webhooks:due"
    assert keys.ADMISSIONS == "pneuradnet:admissions"
    assert keys.ADMISSION_BYTES == "pneuradnet:admissions:bytes"
    assert keys.IMAGES_OWNED == "pneuradnet:images:owned"
    assert keys.fair_pending_key("owner1") == "pneuradnet:fair:pending:owner1"
    assert keys.fair_in_flight_key("owner1") == "pneuradnet:fair:in-flight:owner1"
    assert keys.fair_chunks_key("owner1") == "pneuradnet:fair:chunks:owner1"
    assert keys.fair_released_key("c1") == "pneuradnet:fair:released:c1"
