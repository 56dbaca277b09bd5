"""The web page: static HTML, CSS and JavaScript from api/static (no build step).

The CSS and JavaScript are served as they are. index.html carries, in data attributes of its <body>, the few
settings the page must know (whether explanations are on, the upload limits it splits a drop by): the page
reads them there, with no call of its own, so it knows them before any API key is given.
"""

import hashlib
import html
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from api.deps import SettingsDep
from service.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
"""index.html, app.js and style.css."""

CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
"""The page loads nothing from anywhere else, runs no inline script, and may not be framed."""

NO_CACHE = "no-cache"
"""Browsers keep the files but ask again (a cheap 304 by ETag), so a new release is never hidden by a cache."""

PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
"""`{{name}}` in index.html: replaced by the value of that name in page_settings()."""


class RevalidatedStaticFiles(StaticFiles):
    """Static files that browsers revalidate (NO_CACHE): the page's, and the API documentation's (api/docs.py)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = NO_CACHE
        return response


router = APIRouter(tags=["page"])
router.mount("/static", RevalidatedStaticFiles(directory=STATIC_DIR), name="static")


@router.get("/", include_in_schema=False)
async def index(request: Request, settings: SettingsDep) -> Response:
    page = render_index(settings)
    etag = '"' + hashlib.sha256(page.encode()).hexdigest()[:32] + '"'
    headers = {"Cache-Control": NO_CACHE, "ETag": etag, "Content-Security-Policy": CONTENT_SECURITY_POLICY,
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
    if request.headers.get("If-None-Match") == etag:
        return Response(status_code=304, headers=headers)
    return HTMLResponse(page, headers=headers)


def page_settings(settings: Settings) -> dict[str, str]:
    """What the page is told of the service's settings (nothing secret: anyone may load the page)."""
    return {"explain_enabled": "true" if settings.explain_enabled else "false",
            "max_files_per_request": str(settings.max_files_per_request),
            "max_upload_bytes": str(settings.max_upload_bytes)}


def render_index(settings: Settings) -> str:
    values = page_settings(settings)
    template = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return PLACEHOLDER.sub(lambda match: html.escape(values[match.group(1)]), template)
