"""The web page in a real browser (Debian's Chromium, headless, driven by Playwright) against the live service."""

import csv
import io
import json
import re
import subprocess
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from playwright import sync_api as playwright_sync
from redis import Redis

from tests.live_service import TEST_REDIS_URL, start_api, wipe_jobs
from tests.processes import ROOT, stop

expect = playwright_sync.expect
Page = playwright_sync.Page

pytestmark = pytest.mark.model

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium (apt-get install chromium); Playwright never downloads a browser here."""

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

ARTIFACTS = ROOT / "artifacts"
"""Screenshots of the finished page, for people to look at (git-ignored)."""

RESULTS_TIMEOUT_MS = 120_000
"""Longest the page may take to show every result of a small batch."""

NOT_AN_IMAGE = {"name": "notes.png", "mimeType": "image/png", "buffer": b"these are notes, not pixels"}

TEAM_KEY = "team-key"
"""The one key of the API started with API_KEYS."""

KEY_ITEM = "pneuradnet-api-key"
"""The sessionStorage item where the page keeps the key (KEY_ITEM in api/static/app.js)."""

LANGUAGE_ITEM = "pneuradnet-language"
"""The localStorage item where the page keeps the language chosen with its switch (LANGUAGE_ITEM in app.js)."""

ENGLISH_NAMES = {"NORMAL": "Normal", "PNEUMONIA": "Pneumonia"}
SPANISH_NAMES = {"NORMAL": "Normal", "PNEUMONIA": "Neumonía"}
"""How the page names the default model's labels (display_names in models/default.json)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/install.sh --test does it as root)")
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, api_url: str) -> Iterator[Page]:
    with open_page(browser, api_url) as browser_page:
        yield browser_page


@pytest.fixture
def keyed_api_url(tmp_path: Path, worker_process: subprocess.Popen) -> Iterator[str]:
    """An API that wants `Authorization: Bearer team-key`; the session's worker runs its jobs."""
    process, url = start_api(tmp_path / "api.log", API_KEYS=TEAM_KEY)
    yield url
    stop(process)


@pytest.fixture
def explainless_api_url(tmp_path: Path, worker_process: subprocess.Popen) -> Iterator[str]:
    """An API run with EXPLAIN_ENABLED=0 and an empty job store; the session's worker runs its jobs."""
    wipe_jobs()
    process, url = start_api(tmp_path / "api.log", EXPLAIN_ENABLED="0")
    yield url
    stop(process)
    wipe_jobs()


@contextmanager
def open_page(browser, api_url: str, *, locale: str = "en-US", path: str = "/") -> Iterator[Page]:
    """A fresh page on the live API, in a browser whose language is `locale`; a request to another host, a script
    error or a CSP violation fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True, locale=locale)
    outside: list[str] = []

    def same_origin_only(route) -> None:
        if urlparse(route.request.url).netloc == urlparse(api_url).netloc or route.request.url.startswith("blob:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", same_origin_only)
    browser_page = context.new_page()
    errors: list[str] = []
    browser_page.on("pageerror", lambda error: errors.append(str(error)))
    browser_page.on("console", lambda message: errors.append(message.text)
                    if "Content Security Policy" in message.text else None)
    browser_page.goto(f"{api_url}{path}")
    yield browser_page
    context.close()
    assert outside == [], "the page fetched from outside the service"
    assert errors == [], "the page raised JavaScript errors or broke its Content-Security-Policy"


def payload(path: Path) -> dict:
    """A file for the file input (Playwright does not mix paths and in-memory files in one call)."""
    return {"name": path.name, "mimeType": "image/jpeg", "buffer": path.read_bytes()}


def submit(page: Page, files: list[dict]) -> str:
    """Chooses files in the page's file input; returns the batch id of the upload it makes."""
    with page.expect_response(lambda r: r.url.endswith("/jobs") and r.request.method == "POST") as answer:
        page.locator("#file-input").set_input_files(files)
    assert answer.value.status == 202
    return answer.value.json()["batch_id"]


def shown_job_ids(page: Page) -> list[str]:
    return page.locator("#results > li").evaluate_all("items => items.map(item => item.dataset.jobId)")


def zip_payload(name: str, members: dict[str, bytes]) -> dict:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zip_file:
        for member, data in members.items():
            zip_file.writestr(member, data)
    return {"name": name, "mimeType": "application/zip", "buffer": archive.getvalue()}


def refusal_of(client: httpx.Client, file: dict) -> str:
    """The API's own reason for refusing `file` sent alone: what the page must show beside its name."""
    answer = client.post("/jobs", files=[("files", (file["name"], file["buffer"], file["mimeType"]))])
    assert answer.status_code in (413, 422), answer.text
    return answer.json()["detail"]


def sentence(text: str) -> str:
    """The API's detail as the page writes it (sentence() in app.js)."""
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text[-1:] in ".!?…" else f"{text}."


def posts_to_jobs(page: Page) -> list[object]:
    """Every POST /jobs the page makes from now on."""
    posts: list[object] = []
    page.on("request", lambda request: posts.append(request)
            if request.method == "POST" and "/jobs" in request.url else None)
    return posts


def test_a_bulk_upload_shows_every_result_and_exports_them(page: Page, client: httpx.Client,
                                                           radiographs: list[Path]):
    chosen = [*radiographs[:2], *radiographs[-2:]]  # two NORMAL, two pneumonia
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.get_by_text("Decision support for qualified staff, not a diagnosis.")).to_be_visible()

    batch_id = submit(page, [*map(payload, chosen), NOT_AN_IMAGE])

    expect(page.locator("#results > li")).to_have_count(5)
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^All 5 files finished"),
                                                        timeout=RESULTS_TIMEOUT_MS)
    batch = client.get(f"/batches/{batch_id}").json()
    assert batch["counts"]["succeeded"] == 4 and batch["counts"]["failed"] == 1
    jobs = {job["filename"]: job for job in batch["jobs"]}
    for path in chosen:
        job = jobs[path.name]
        row = page.locator(f'#results > li[data-job-id="{job["id"]}"]')
        expect(row.locator(".filename")).to_have_text(path.name)
        expect(row.locator(".status")).to_have_text("Done")
        expect(row.locator(".predicted-class")).to_have_text(ENGLISH_NAMES[job["result"]["predicted_class"]])
        expect(row.locator(".probability-label")).to_have_text([ENGLISH_NAMES[label]
                                                                for label in job["result"]["labels"]])
        expect(row.locator(".model")).to_have_text("Model xception-pneumonia 0.3.0")
        expect(row.locator(".thumb img")).to_be_visible()
    bad = page.locator(f'#results > li[data-job-id="{jobs["notes.png"]["id"]}"]')
    expect(bad.locator(".status")).to_have_text("Failed")
    expect(bad.locator(".error-detail")).to_have_text(
        "Not an image the model can read. The service says: Not an image: send PNG, JPEG or DICOM.")
    assert shown_job_ids(page) == [job["id"] for job in batch["jobs"]]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "page.png", full_page=True)

    with page.expect_download() as csv_download:
        page.get_by_role("link", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(csv_download.value.path().read_text())))
    assert sorted(row["filename"] for row in rows) == sorted(jobs)
    with page.expect_download() as json_download:
        page.get_by_role("button", name="Download JSON").click()
    exported = json.loads(json_download.value.path().read_text())
    assert [job["id"] for job in exported["jobs"]] == [job["id"] for job in batch["jobs"]]
    assert exported["notice"] == "Decision support for qualified staff, not a diagnosis."

    succeeded = [job for job in batch["jobs"] if job["result"]]
    pneumonia = [job["id"] for job in succeeded if job["result"]["predicted_class"] == "PNEUMONIA"]
    assert pneumonia and len(pneumonia) < 4, "the chosen radiographs should not all get one class"
    page.get_by_label("Show").select_option(label="Predicted Pneumonia")
    expect(page.locator("#shown-count")).to_have_text(f"Showing {len(pneumonia)} of 5 files.")
    assert shown_job_ids(page) == pneumonia
    page.get_by_label("Show").select_option(label="Failed (no result)")
    assert shown_job_ids(page) == [jobs["notes.png"]["id"]]
    page.get_by_label("Show").select_option(label="All files")
    page.get_by_label("Confidence below").fill("90")
    unsure = [job["id"] for job in succeeded if job["result"]["confidence"] < 0.9]
    expect(page.locator("#results > li")).to_have_count(len(unsure))
    assert shown_job_ids(page) == unsure
    page.get_by_label("Confidence below").fill("")
    page.get_by_label("Sort by").select_option(label="Confidence, lowest first")
    by_confidence = sorted(succeeded, key=lambda job: job["result"]["confidence"])
    assert shown_job_ids(page) == [*(job["id"] for job in by_confidence), jobs["notes.png"]["id"]]

    page.get_by_label("Sort by").select_option(label="Upload order")
    page.evaluate("document.activeElement.blur()")  # no focus ring in the screenshot
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page overflows a narrow screen"
    page.screenshot(path=ARTIFACTS / "page-narrow.png", full_page=True)


def test_an_explained_upload_shows_its_heatmap_over_the_thumbnail(page: Page, radiographs: list[Path],
                                                                   worker_process: subprocess.Popen):
    page.get_by_label("Explain (heatmap)").check()
    with page.expect_response(lambda r: r.url.endswith("/jobs?explain=true") and r.request.method == "POST") as answer:
        page.locator("#file-input").set_input_files([payload(radiographs[-1])])
    assert answer.value.status == 202

    row = page.locator("#results > li").first
    show = row.get_by_label("Show heatmap")
    expect(show).to_be_checked(timeout=RESULTS_TIMEOUT_MS)  # the worker's first explanation loads TensorFlow
    overlay = row.locator(".thumb .thumb-heatmap")
    expect(overlay).to_be_visible()
    expect(overlay).to_have_attribute("alt", f"Heatmap of {radiographs[-1].name}")
    opacity = row.get_by_label("Heatmap opacity")
    opacity.fill("40")
    expect(overlay).to_have_css("opacity", "0.4")
    ARTIFACTS.mkdir(exist_ok=True)
    row.screenshot(path=ARTIFACTS / "page-heatmap.png")
    show.uncheck()
    expect(overlay).to_be_hidden()
    expect(opacity).to_be_disabled()


def test_a_zip_shows_a_placeholder_then_one_row_per_image(page: Page, client: httpx.Client,
                                                          radiographs: list[Path]):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zip_file:
        for path in radiographs[:2]:
            zip_file.write(path, f"study-1/{path.name}")
    held = []
    page.route("**/jobs", lambda route: held.append(route))  # the upload waits while the placeholder is checked

    page.locator("#file-input").set_input_files([{"name": "study.zip", "mimeType": "application/zip",
                                                  "buffer": archive.getvalue()}])

    placeholder = page.locator('#results > li[data-kind="zip"]')
    expect(placeholder.locator(".filename")).to_have_text("study.zip")
    expect(placeholder.locator(".status")).to_have_text("Uploading archive")
    expect(page.locator("#results > li")).to_have_count(1)
    while not held:
        page.wait_for_timeout(20)
    held[0].continue_()
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^All 2 files finished"),
                                                        timeout=RESULTS_TIMEOUT_MS)
    expect(page.locator("#results > li .filename")).to_have_text([f"study-1/{path.name}" for path in radiographs[:2]])
    expect(page.locator("#results > li .archive")).to_have_text(["from study.zip"] * 2)
    expect(page.locator('#results > li[data-kind="zip"]')).to_have_count(0)


def test_the_keyboard_opens_the_picker_and_a_refused_upload_shows_the_problem_detail(page: Page):
    # The live API allows 40 images a request (MAX_FILES_PER_REQUEST in tests/live_service.py): a ZIP of 41 is
    # refused whole.
    files = [zip_payload("many.zip", {f"tiny-{i}.png": b"x" for i in range(41)})]
    # Playwright turns on file-chooser interception without waiting for it: subscribe now, well before Enter.
    page.on("filechooser", lambda _: None)
    page.keyboard.press("Tab")  # the header's link to the API documentation
    page.keyboard.press("Tab")  # the language switch: English
    page.keyboard.press("Tab")  # Español
    page.keyboard.press("Tab")
    expect(page.locator("#file-input")).to_be_focused()
    assert page.locator("#dropzone").evaluate("zone => getComputedStyle(zone).outlineStyle") == "solid"

    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(files)

    alert = page.get_by_role("alert")
    expect(alert.locator(".refused-summary")).to_have_text("This file was refused:")
    expect(alert.get_by_role("listitem")).to_have_text(
        ["many.zip: Too many files in one upload. The service says: More than 40 images in one request "
         "(MAX_FILES_PER_REQUEST); split them into several requests."])
    expect(page.locator("#results > li")).to_have_count(0)


def test_one_bad_archive_does_not_sink_the_others_and_every_refused_file_is_listed(
        page: Page, client: httpx.Client, radiographs: list[Path]):
    good_zip = zip_payload("study.zip", {f"study/{path.name}": path.read_bytes() for path in radiographs[1:3]})
    truncated = {**good_zip, "name": "trunc.zip", "buffer": good_zip["buffer"][:len(good_zip["buffer"]) // 2]}
    bomb = zip_payload("bomb.zip", {"zeros.png": bytes(4 * 1024 * 1024)})  # expands about 1000-fold
    reasons = {file["name"]: refusal_of(client, file) for file in (truncated, bomb)}
    assert "trunc.zip is not a readable ZIP archive" in reasons["trunc.zip"]
    posts = posts_to_jobs(page)

    page.locator("#file-input").set_input_files(
        [payload(radiographs[0]), truncated, good_zip, payload(radiographs[-1]), bomb])

    alert = page.get_by_role("alert")
    expect(alert.get_by_role("listitem")).to_have_text(
        [f"trunc.zip: Not a readable ZIP archive. The service says: {sentence(reasons['trunc.zip'])}",
         f"bomb.zip: The archive expands too much to be safe. The service says: {sentence(reasons['bomb.zip'])}"],
        timeout=RESULTS_TIMEOUT_MS)
    expect(alert.locator(".refused-summary")).to_have_text("2 of 5 files were refused; the others were sent:")
    expect(page.locator("#progress-text")).to_have_text("All 4 files finished: 4 done.", timeout=RESULTS_TIMEOUT_MS)
    expect(page.locator("#results > li .filename")).to_have_text(
        [radiographs[0].name, radiographs[-1].name, *(f"study/{path.name}" for path in radiographs[1:3])])
    expect(page.locator("#results > li .predicted-class")).to_have_count(4)
    expect(page.locator('#results > li[data-kind="zip"]')).to_have_count(0)
    # The loose images in one request, each archive in one of its own: two batches came of it.
    assert len(posts) == 4
    expect(page.locator("#csv-links a")).to_have_text(["CSV, batch 1 (2)", "CSV, batch 2 (2)"])
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "page-refused.png", full_page=True)

    page.get_by_role("button", name="Clear results").click()
    expect(alert).to_be_hidden()


def test_loose_images_beyond_the_file_limit_go_in_as_many_requests_as_needed(page: Page, client: httpx.Client):
    files = [{"name": f"tiny-{i}.png", "mimeType": "image/png", "buffer": b"x"} for i in range(41)]
    posts = posts_to_jobs(page)

    page.locator("#file-input").set_input_files(files)

    expect(page.locator("#progress-text")).to_have_text("All 41 files finished: 41 failed.",
                                                        timeout=RESULTS_TIMEOUT_MS)
    assert len(posts) == 2, "40 images a request (MAX_FILES_PER_REQUEST), then the last one"
    expect(page.locator("#results > li .filename")).to_have_text([file["name"] for file in files])
    expect(page.get_by_role("alert")).to_have_count(0)


def test_with_api_keys_the_page_asks_for_the_key_once_and_keeps_it_for_the_tab(browser, keyed_api_url: str,
                                                                              radiographs: list[Path]):
    chosen = [radiographs[0], radiographs[-1]]
    with open_page(browser, keyed_api_url) as page:
        requested: list[str] = []
        console: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.on("console", lambda message: console.append(message.text))
        key_form = page.get_by_role("form", name="API key needed")
        key_input = page.get_by_label("API key", exact=True)
        expect(key_form).to_be_hidden()

        page.locator("#file-input").set_input_files([*map(payload, chosen)])
        expect(key_form).to_be_visible()
        expect(key_input).to_be_focused()
        expect(key_input).to_have_attribute("type", "password")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "page-key.png")

        key_input.fill("wrong-key")
        page.get_by_role("button", name="Use key").click()
        expect(page.locator("#key-error")).to_have_text("The API key is not valid.")
        expect(key_input).to_be_focused()
        expect(key_input).to_have_value("")
        assert page.evaluate(f"sessionStorage.getItem('{KEY_ITEM}')") is None, "a refused key is not kept"

        key_input.fill(TEAM_KEY)
        with page.expect_response(lambda r: r.url.endswith("/jobs") and r.request.method == "POST") as answer:
            key_input.press("Enter")  # the upload that was refused is made again, with the key
        assert answer.value.status == 202
        batch_id = answer.value.json()["batch_id"]
        expect(key_form).to_be_hidden()
        expect(page.locator("#progress-text")).to_have_text(re.compile(r"^All 2 files finished: 2 done"),
                                                            timeout=RESULTS_TIMEOUT_MS)
        expect(page.locator("#results > li .filename")).to_have_text([path.name for path in chosen])
        expect(page.locator("#results > li .predicted-class")).to_have_count(2)
        expect(page.get_by_role("alert")).to_have_count(0)

        with page.expect_download() as csv_download:
            page.get_by_role("link", name="Download CSV").click()
        assert csv_download.value.suggested_filename == f"pneuradnet-{batch_id}.csv"
        rows = list(csv.DictReader(io.StringIO(csv_download.value.path().read_text())))
        assert sorted(row["filename"] for row in rows) == sorted(path.name for path in chosen)

        assert page.evaluate(f"sessionStorage.getItem('{KEY_ITEM}')") == TEAM_KEY
        assert page.evaluate("localStorage.length") == 0
        page.reload()  # sessionStorage lives as long as the tab: no second prompt
        submit(page, [payload(radiographs[1])])
        expect(page.locator("#progress-text")).to_have_text(re.compile(r"^All 1 file finished: 1 done"),
                                                            timeout=RESULTS_TIMEOUT_MS)
        expect(key_form).to_be_hidden()

        page.get_by_role("button", name="Forget key").click()
        expect(page.get_by_role("button", name="Forget key")).to_be_hidden()
        assert page.evaluate(f"sessionStorage.getItem('{KEY_ITEM}')") is None
        with page.expect_download() as csv_download:
            page.get_by_role("link", name="Download CSV").click()
            expect(key_form).to_be_visible()  # the CSV is fetched with the key too, so it asks again
            expect(page.locator("#key-error")).to_be_hidden()
            key_input.fill(TEAM_KEY)
            key_input.press("Enter")
        rows = list(csv.DictReader(io.StringIO(csv_download.value.path().read_text())))
        assert [row["filename"] for row in rows] == [radiographs[1].name]
        expect(key_form).to_be_hidden()

        assert TEAM_KEY not in page.url and "wrong-key" not in page.url
        assert requested and not [url for url in requested if TEAM_KEY in url or "wrong-key" in url]
        assert not [text for text in console if TEAM_KEY in text or "wrong-key" in text]


def test_with_explain_disabled_the_page_offers_no_heatmap_and_the_api_refuses_explain(
        browser, explainless_api_url: str, radiographs: list[Path]):
    redis = Redis.from_url(TEST_REDIS_URL)
    with httpx.Client(base_url=explainless_api_url, timeout=60) as http:
        answer = http.post("/jobs?explain=true", files=[("files", (radiographs[0].name,
                                                                   radiographs[0].read_bytes(), "image/jpeg"))])
    assert answer.status_code == 422
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:pneuradnet:problem:explain-disabled"
    assert "EXPLAIN_ENABLED=0" in answer.json()["detail"]
    assert not list(redis.scan_iter("pneuradnet:job:*")), "a refused request stores no job"
    assert not list(redis.scan_iter("pneuradnet:batch:*"))

    with open_page(browser, explainless_api_url) as page:
        expect(page.get_by_label("Explain (heatmap)")).to_be_hidden()
        expect(page.get_by_text("Also shows where in each image the model looked")).to_be_hidden()
        with page.expect_response(lambda r: r.request.method == "POST" and "/jobs" in r.url) as upload:
            page.locator("#file-input").set_input_files([payload(radiographs[0])])
        assert upload.value.url.endswith("/jobs") and upload.value.status == 202
        expect(page.locator("#progress-text")).to_have_text("All 1 file finished: 1 done.",
                                                            timeout=RESULTS_TIMEOUT_MS)
        expect(page.locator("#results > li .heatmap-controls, #results > li .heatmap-note")).to_have_count(0)
    redis.close()


# --- Languages -------------------------------------------------------------------------------------------------


def catalogue_texts_shown(page: Page) -> dict[str, str]:
    """The text of every element of the page that shows a catalogue text, by its key."""
    return page.locator("[data-i18n]").evaluate_all(
        "nodes => Object.fromEntries(nodes.map(node => [node.dataset.i18n, node.textContent]))")


def test_a_spanish_browser_sees_the_whole_page_in_spanish(browser, api_url: str, client: httpx.Client,
                                                          radiographs: list[Path]):
    spanish = json.loads((ROOT / "api/static/i18n/es.json").read_text())
    chosen = [radiographs[0], radiographs[-1]]  # NORMAL, then pneumonia
    with open_page(browser, api_url, locale="es-ES") as page:
        expect(page.locator("html")).to_have_attribute("lang", "es")
        expect(page).to_have_title("PNEURADNET · Clasificación de radiografías de tórax")
        expect(page.get_by_role("note")).to_have_text(
            "Apoyo a la decisión para personal cualificado, no un diagnóstico. "
            "Lea cada resultado con la imagen y el paciente a la vista.")
        expect(page.get_by_role("button", name="Español")).to_have_attribute("aria-pressed", "true")

        batch_id = submit(page, [*map(payload, chosen), NOT_AN_IMAGE])

        expect(page.locator("#progress-text")).to_have_text("Los 3 archivos han terminado: 2 listos, 1 fallido.",
                                                            timeout=RESULTS_TIMEOUT_MS)
        shown = catalogue_texts_shown(page)
        assert shown == {key: spanish[key] for key in shown} and len(shown) >= 30
        assert page.get_by_label("Confianza menor que").get_attribute("placeholder") == "cualquiera"
        jobs = {job["filename"]: job for job in client.get(f"/batches/{batch_id}").json()["jobs"]}
        for path in chosen:
            result = jobs[path.name]["result"]
            assert result["labels"] == ["NORMAL", "PNEUMONIA"], "the API's results keep the raw labels"
            row = page.locator(f'#results > li[data-job-id="{jobs[path.name]["id"]}"]')
            expect(row.locator(".status")).to_have_text("Listo")
            expect(row.locator(".predicted-class")).to_have_text(SPANISH_NAMES[result["predicted_class"]])
            expect(row.locator(".probability-label")).to_have_text(["Normal", "Neumonía"])
            expect(row.locator(".confidence")).to_have_text(re.compile(r"^\d+,\d\s%\sde confianza$"))
            expect(row.locator(".model")).to_have_text("Modelo xception-pneumonia 0.3.0")
        assert {jobs[path.name]["result"]["predicted_class"] for path in chosen} == {"NORMAL", "PNEUMONIA"}
        bad = page.locator(f'#results > li[data-job-id="{jobs["notes.png"]["id"]}"]')
        expect(bad.locator(".status")).to_have_text("Fallido")
        expect(bad.locator(".error-detail")).to_have_text("No es una imagen que el modelo pueda leer. "
                                                          "El servicio dice (en inglés): Not an image: send PNG, "
                                                          "JPEG or DICOM.")
        expect(page.get_by_label("Mostrar").locator("option")).to_have_text(
            ["Todos los archivos", "Predicción: Normal", "Predicción: Neumonía", "Fallidos (sin resultado)"])
        page.get_by_label("Mostrar").select_option(label="Predicción: Neumonía")
        expect(page.locator("#shown-count")).to_have_text("Se muestran 1 de 3 archivos.")
        expect(page.get_by_role("link", name="Descargar CSV")).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "page-es.png", full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the Spanish page overflows a phone"


def test_the_switch_changes_the_language_and_is_remembered_and_lang_in_the_address_wins(
        browser, api_url: str, client: httpx.Client, radiographs: list[Path]):
    with open_page(browser, api_url, locale="en-US") as page:
        expect(page.locator("html")).to_have_attribute("lang", "en")
        submit(page, [payload(radiographs[-1])])
        expect(page.locator("#progress-text")).to_have_text("All 1 file finished: 1 done.",
                                                            timeout=RESULTS_TIMEOUT_MS)
        row = page.locator("#results > li").first
        english_class = row.locator(".predicted-class").text_content()
        assert english_class in ENGLISH_NAMES.values()

        page.get_by_role("button", name="Español").click()

        expect(page.locator("html")).to_have_attribute("lang", "es")
        expect(page.locator("#notice strong")).to_have_text(
            "Apoyo a la decisión para personal cualificado, no un diagnóstico.")
        expect(page.locator("#progress-text")).to_have_text("El archivo ha terminado: 1 listo.")
        expect(row.locator(".status")).to_have_text("Listo")
        spanish_class = {v: k for k, v in ENGLISH_NAMES.items()}[english_class]
        expect(row.locator(".predicted-class")).to_have_text(SPANISH_NAMES[spanish_class])
        expect(page.get_by_label("Explicar (mapa de calor)")).to_be_visible()
        expect(page.get_by_role("button", name="Español")).to_have_attribute("aria-pressed", "true")
        expect(page.get_by_role("button", name="English")).to_have_attribute("aria-pressed", "false")
        assert page.evaluate(f"localStorage.getItem('{LANGUAGE_ITEM}')") == "es"

        page.reload()  # an English browser, but the choice is remembered
        expect(page.locator("#notice strong")).to_have_text(
            "Apoyo a la decisión para personal cualificado, no un diagnóstico.")
        expect(page.locator("html")).to_have_attribute("lang", "es")
        expect(page.get_by_label("Explicar (mapa de calor)")).to_be_visible()

        page.goto(f"{api_url}/?lang=en")  # the address wins over the remembered choice
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator("#notice strong")).to_have_text("Decision support for qualified staff, not a diagnosis.")
        page.wait_for_timeout(500)  # the page would have switched by now, had the stored choice won
        expect(page.get_by_label("Explain (heatmap)")).to_be_visible()
        assert page.evaluate(f"localStorage.getItem('{LANGUAGE_ITEM}')") == "es", "?lang= is not a choice kept"

        page.get_by_role("button", name="Español").click()  # the switch on a ?lang= page: the address follows it
        expect(page.locator("html")).to_have_attribute("lang", "es")
        assert page.url.endswith("/?lang=es")
        page.reload()
        expect(page.get_by_label("Explicar (mapa de calor)")).to_be_visible()

        page.get_by_role("button", name="English").click()
        page.reload()
        expect(page.get_by_label("Explain (heatmap)")).to_be_visible()
        assert page.evaluate(f"localStorage.getItem('{LANGUAGE_ITEM}')") == "en"


def test_lang_in_the_address_wins_over_a_spanish_browser(browser, api_url: str):
    with open_page(browser, api_url, locale="es-ES", path="/?lang=en") as page:
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator("#notice strong")).to_have_text("Decision support for qualified staff, not a diagnosis.")
        expect(page.get_by_role("button", name="English")).to_have_attribute("aria-pressed", "true")


def test_a_refused_files_reason_is_shown_in_spanish(browser, api_url: str, client: httpx.Client):
    many = zip_payload("many.zip", {f"tiny-{i}.png": b"x" for i in range(41)})  # over MAX_FILES_PER_REQUEST (40)
    detail = refusal_of(client, many)
    with open_page(browser, api_url, locale="es-ES") as page:
        page.locator("#file-input").set_input_files([many])

        alert = page.get_by_role("alert")
        expect(alert.locator(".refused-summary")).to_have_text("Se rechazó este archivo:")
        expect(alert.get_by_role("listitem")).to_have_text(
            [f"many.zip: Demasiados archivos en una sola subida. El servicio dice (en inglés): {sentence(detail)}"])
        expect(alert.locator("[lang=en]")).to_have_text(sentence(detail))
        expect(page.locator("#results > li")).to_have_count(0)
