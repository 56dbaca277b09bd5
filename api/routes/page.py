"""The web page: static HTML, CSS and JavaScript from api/static, served as they are (no build step)."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
"""index.html, app.js and style.css."""

CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
"""The page loads nothing from anywhere else, runs no inline script, and may not be framed."""

NO_CACHE = "no-cache"
"""Browsers keep the files but ask again (a cheap 304 by ETag), so a new release is never hidden by a cache."""


class _RevalidatedStaticFiles(StaticFiles):
    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = NO_CACHE
        return response


router = APIRouter(tags=["page"])
router.mount("/static", _RevalidatedStaticFiles(directory=STATIC_DIR), name="static")


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={
        "Cache-Control": NO_CACHE, "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})
