"""The web page: static HTML, CSS and JavaScript from api/static (no build step).

The CSS and JavaScript are served as they are. index.html carries, in data attributes of its <body>, the few
settings the page must know (whether explanations are on, the upload limits it splits a drop by, the names of the
model's labels in each language): the page reads them there, with no call of its own, so it knows them before any
API key is given. It is written in the language the request asks for (api/languages.py), with that language's
catalogue embedded for the texts app.js writes.
"""

import hashlib
import html
import json
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from api.deps import SettingsDep
from api.languages import catalogue, choose_language
from pneuradnet.errors import ModelManifestError
from pneuradnet.manifest import load_manifest
from service.settings import Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
"""index.html, app.js and style.css."""

CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
"""The page loads nothing from anywhere else, runs no inline script, and may not be framed."""

NO_CACHE = "no-cache"
"""Browsers keep the files but ask again (a cheap 304 by ETag), so a new release is never hidden by a cache."""

PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
"""`{{name}}` in index.html: replaced by the value of that name in page_settings(), or by the page's language
(`language`) and its catalogue (`catalogue`)."""

TRANSLATED_TEXT = re.compile(r'(<[a-z][a-z0-9]*\s[^>]*?\bdata-i18n="([\w.-]+)"[^>]*>)[^<]*')
"""An element of index.html whose text is the catalogue's text for its data-i18n key (text only, no child)."""

TRANSLATED_PLACEHOLDER = re.compile(r'(<[^>]*?\bplaceholder=")[^"]*("[^>]*?\bdata-i18n-placeholder="([\w.-]+)")')
"""An input whose placeholder is the catalogue's text for its data-i18n-placeholder key."""


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
    language = choose_language(request.headers.get("Accept-Language"), request.query_params.get("lang"))
    page = render_index(settings, language)
    etag = '"' + hashlib.sha256(page.encode()).hexdigest()[:32] + '"'
    headers = {"Cache-Control": NO_CACHE, "ETag": etag, "Content-Security-Policy": CONTENT_SECURITY_POLICY,
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Vary": "Accept-Language",
               "Content-Language": language}
    if request.headers.get("If-None-Match") == etag:
        return Response(status_code=304, headers=headers)
    return HTMLResponse(page, headers=headers)


def page_settings(settings: Settings) -> dict[str, str]:
    """What the page is told of the service's settings (nothing secret: anyone may load the page)."""
    return {"explain_enabled": "true" if settings.explain_enabled else "false",
            "max_files_per_request": str(settings.max_files_per_request),
            "max_upload_bytes": str(settings.max_upload_bytes),
            "display_names": json.dumps(display_names(settings.model_manifest), ensure_ascii=False)}


@lru_cache
def display_names(manifest: str) -> dict[str, dict[str, dict[str, str]]]:
    """{model name: {language: {label: name}}} of the model the service is configured for, read once from its
    manifest (JSON only). Empty if it cannot be read: the page then shows the labels as they are."""
    try:
        model = load_manifest(manifest)
    except ModelManifestError as error:
        log.warning("the page shows the model's labels untranslated: %s", error)
        return {}
    return {model.name: model.display_names} if model.display_names else {}


def render_index(settings: Settings, language: str) -> str:
    texts = catalogue(language)
    template = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    template = TRANSLATED_TEXT.sub(lambda match: match.group(1) + html.escape(texts[match.group(2)], quote=False),
                                   template)
    template = TRANSLATED_PLACEHOLDER.sub(
        lambda match: match.group(1) + html.escape(texts[match.group(3)]) + match.group(2), template)
    values = {name: html.escape(value) for name, value in page_settings(settings).items()}
    values |= {"language": language, "catalogue": script_data(texts)}
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def script_data(value: object) -> str:
    """JSON that may stand inside a <script> element: no `<` in it can close the element or open a comment."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")
