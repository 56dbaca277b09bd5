"""/docs and /redoc in a real browser (Debian's Chromium) that may reach nothing but the service, as on a hospital
network without internet access; and who may read the API's description when API_KEYS is set."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from playwright import sync_api as playwright_sync

from tests.live_service import start_api
from tests.processes import stop

expect = playwright_sync.expect
Page = playwright_sync.Page

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium (apt-get install chromium); Playwright never downloads a browser here."""

HOSPITAL_HOST = "pneuradnet.hospital.test"
"""The name the browser reaches the service by, as on a hospital network: not localhost, which Swagger UI treats
apart (its online validator badge is never shown for a document on localhost)."""

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 f"--host-resolver-rules=MAP {HOSPITAL_HOST} 127.0.0.1"]

RENDER_TIMEOUT_MS = 30_000
"""Longest the documentation may take to appear (the scripts are 1-1.5 MB; the machine is shared)."""

REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
"""The one file ReDoc 2 always asks for elsewhere (its footer's logo, hidden when it fails to load): the docs pages'
Content-Security-Policy blocks it inside the browser, so no request for it is ever sent."""

TEAM_KEY = "team-key"


@pytest.fixture(scope="module")
def browser() -> Iterator[playwright_sync.Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/install.sh --test does it as root)")
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def keyed_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API that wants `Authorization: Bearer team-key`; no worker, as reading the docs runs no job."""
    process, url = start_api(tmp_path_factory.mktemp("keyed-api") / "api.log", API_KEYS=TEAM_KEY)
    yield url
    stop(process)


def as_hospital_host(api_url: str) -> str:
    return api_url.replace("127.0.0.1", HOSPITAL_HOST)


@contextmanager
def offline_page(browser: playwright_sync.Browser, service_url: str, *, blocked_by_policy: tuple[str, ...] = ()
                 ) -> Iterator[Page]:
    """A page whose every request outside the service's origin is refused and recorded; on leaving, fails the test
    if there was any such request, a script error or a Content-Security-Policy violation other than the blocking
    of the URLs in blocked_by_policy."""
    origin = urlparse(service_url).netloc
    expected_blocks = tuple(f"Loading the image '{url}' violates" for url in blocked_by_policy)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def service_only(route: playwright_sync.Route) -> None:
        url = route.request.url
        if urlparse(url).netloc == origin or url.startswith(("blob:", "data:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", service_only)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text)
            if "Content Security Policy" in message.text and not message.text.startswith(expected_blocks) else None)
    yield page
    context.close()
    assert outside == [], "the documentation fetched from outside the service"
    assert errors == [], "the documentation raised JavaScript errors or broke its Content-Security-Policy"


def operations(service_url: str) -> list[tuple[str, str]]:
    document = httpx.get(f"{service_url}/openapi.json").json()
    return [(method, path) for path, item in document["paths"].items() for method in item]


def test_swagger_ui_shows_every_operation_with_nothing_fetched_from_outside(browser, api_url: str):
    service = as_hospital_host(api_url)
    with offline_page(browser, service) as page:
        page.goto(f"{service}/docs")

        submit = page.locator('.opblock-post:has(.opblock-summary-path[data-path="/jobs"])')
        expect(submit).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        expect(page.locator(".opblock")).to_have_count(len(operations(api_url)))
        expect(page.get_by_role("heading", name="PNEURADNET")).to_be_visible()

        submit.locator(".opblock-summary-control").click()  # the operation opens, ready to be tried
        expect(submit.get_by_role("button", name="Try it out")).to_be_visible()


def test_redoc_shows_the_operations_with_nothing_fetched_from_outside(browser, api_url: str):
    service = as_hospital_host(api_url)
    with offline_page(browser, service, blocked_by_policy=(REDOCLY_LOGO,)) as page:
        page.goto(f"{service}/redoc")

        expect(page.get_by_role("heading", name="PNEURADNET")).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        expect(page.get_by_role("menuitem").filter(has_text="Submit Jobs")).to_be_visible()


def test_with_api_keys_the_description_is_open_and_the_data_is_not(browser, keyed_api_url: str):
    """The docs describe the API, never a job or an image: a reader without a key may see them."""
    assert httpx.get(f"{keyed_api_url}/openapi.json").status_code == 200
    assert httpx.get(f"{keyed_api_url}/jobs/00000000000000000000000000000000").status_code == 401

    service = as_hospital_host(keyed_api_url)
    with offline_page(browser, service) as page:
        page.goto(f"{service}/docs")
        expect(page.locator('.opblock-post:has(.opblock-summary-path[data-path="/jobs"])')).to_be_visible(
            timeout=RENDER_TIMEOUT_MS)


def test_the_docs_pages_run_only_their_own_inline_script(api_url: str):
    answer = httpx.get(f"{api_url}/docs")

    policy = dict(directive.strip().split(" ", 1) for directive in answer.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["connect-src"] == "'self'"
    assert policy["script-src"].startswith("'self' 'sha256-") and "'unsafe-inline'" not in policy["script-src"]
    assert "cdn" not in answer.text.lower() and "/docs-assets/swagger-ui-bundle.js" in answer.text
    assert httpx.get(f"{api_url}/docs-assets/swagger-ui-bundle.js").status_code == 200

