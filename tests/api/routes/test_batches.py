"""GET /batches/{id}: pages that walk every job once in upload order, and the CSV export of every job."""

import csv
import io

import httpx

from service.jobstore import JobStore
from tests.api.routes.support import images


def result_of(predicted: str, probability: float) -> dict:
    """A result as a worker stores it (pneuradnet's result record), without running a model."""
    return {"labels": ["NORMAL", "PNEUMONIA"],
            "predictions": [probability, 1 - probability] if predicted == "NORMAL" else [1 - probability, probability],
            "predicted_class": predicted, "confidence": probability,
            "model": {"name": "xception-pneumonia", "version": "0.3.0"}, "runtime": "onnxruntime",
            "timings_ms": {"inference": 12.5}}


async def test_pages_walk_every_job_once_in_upload_order(api: httpx.AsyncClient):
    names = [f"chest-{n:02}.png" for n in range(11)]
    submitted = (await api.post("/jobs", files=images(*names))).json()

    pages, token = [], None
    while True:
        params = {"page_size": 4} | ({"page_token": token} if token else {})
        answer = await api.get(f"/batches/{submitted['batch_id']}", params=params)
        assert answer.status_code == 200
        pages.append(answer.json())
        token = answer.json()["next_page_token"]
        if token is None:
            break

    assert [len(page["jobs"]) for page in pages] == [4, 4, 3]
    walked = [job for page in pages for job in page["jobs"]]
    assert [job["id"] for job in walked] == [job["id"] for job in submitted["jobs"]]
    assert [job["filename"] for job in walked] == names
    assert all(page["total"] == 11 and page["counts"]["queued"] == 11 for page in pages)


async def test_an_unfinished_batch_asks_to_be_polled_again(api: httpx.AsyncClient, store: JobStore):
    submitted = (await api.post("/jobs", files=images("a.png"))).json()
    job_id = submitted["jobs"][0]["id"]

    unfinished = await api.get(f"/batches/{submitted['batch_id']}")
    store.claim([job_id], token="run-1", lease=60)
    store.succeed_many({job_id: result_of("NORMAL", 0.9)}, holder="run-1")
    finished = await api.get(f"/batches/{submitted['batch_id']}")

    assert int(unfinished.headers["retry-after"]) > 0
    assert "retry-after" not in finished.headers
    assert finished.json()["counts"]["succeeded"] == 1 and finished.json()["counts"]["queued"] == 0


async def test_the_csv_export_has_a_row_per_job_in_upload_order(api: httpx.AsyncClient, store: JobStore):
    submitted = (await api.post("/jobs", files=images("normal.png", "sick.png", "waiting.png"))).json()
    ids = [job["id"] for job in submitted["jobs"]]
    # What a worker does with a task: take its jobs, then store their results.
    assert [job.id for job in store.claim(ids[:2], token="run-1", lease=60)] == ids[:2]
    results = {ids[0]: result_of("NORMAL", 0.875), ids[1]: result_of("PNEUMONIA", 0.75)}
    assert store.succeed_many(results, holder="run-1") == ids[:2]

    answer = await api.get(f"/batches/{submitted['batch_id']}", params={"format": "csv"})

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert f"batch-{submitted['batch_id']}.csv" in answer.headers["content-disposition"]
    header, *rows = list(csv.reader(io.StringIO(answer.text)))
    assert header[:2] == ["filename", "status"]
    assert [row[:2] for row in rows] == [["normal.png", "succeeded"], ["sick.png", "succeeded"],
                                         ["waiting.png", "queued"]]


async def test_the_csv_export_holds_every_job_whatever_the_page_size(api: httpx.AsyncClient):
    names = [f"chest-{n:02}.png" for n in range(9)]
    submitted = (await api.post("/jobs", files=images(*names))).json()

    answer = await api.get(f"/batches/{submitted['batch_id']}", params={"format": "csv", "page_size": 2})

    _, *rows = list(csv.reader(io.StringIO(answer.text)))
    assert [row[0] for row in rows] == names
