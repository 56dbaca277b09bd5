"""The API's documentation pages, /docs (Swagger UI) and /redoc, with every script, style and icon they load
served by the service itself. FastAPI's own pages load them from a CDN and stay blank on a hospital network
without internet access; the files come from the pinned `fastapi-offline` package (never a hand-copied bundle).

The pages, their files and /openapi.json need no API key even when API_KEYS is set: they describe the API,
never a job, a result or an image.
"""

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from api.routes.page import NO_CACHE, RevalidatedStaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"
"""Where the documentation's files are served: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and
favicon.png."""

ASSETS_DIR = Path(str(files("fastapi_offline").joinpath("static")))
"""The files as the package ships them (Swagger UI 5 and ReDoc 2 in fastapi-offline 1.7.7)."""

SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None}
"""No validator badge: it would be fetched from validator.swagger.io (FastAPI's BaseLayout shows none today; this
keeps it so)."""

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def content_security_policy(html: str) -> str:
    """A policy under which the page loads nothing from elsewhere and runs only its own inline script (allowed by
    hash, so no other inline script runs). Swagger UI and ReDoc set inline styles, so styles may be inline."""
    hashes = "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
                     for script in _INLINE_SCRIPT.findall(html))
    return (f"default-src 'self'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'")


def _with_headers(page: HTMLResponse) -> HTMLResponse:
    html = bytes(page.body).decode()
    page.headers.update({"Cache-Control": NO_CACHE, "Content-Security-Policy": content_security_policy(html),
                         "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})
    return page


def install_docs(app: FastAPI) -> None:
    """Serve /docs, /redoc and their files from this process. The app must be made with docs_url=None and
    redoc_url=None, so that FastAPI's CDN pages are not registered first."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("create the FastAPI app with docs_url=None and redoc_url=None before install_docs")
    app.mount(ASSETS_URL, RevalidatedStaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_headers(get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})}))

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_headers(get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False))
