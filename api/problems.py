"""HTTP errors as RFC 9457 problem+json: one exception type for the routes, handlers for the rest."""

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import Problem
from service.problems import PROBLEM_MEDIA_TYPE, problem

REDIS_RETRY_AFTER = 5
"""Seconds a client is asked to wait when the job store does not answer."""

STORE_FULL_RETRY_AFTER = 30
"""Seconds a client is asked to wait when Redis is full: jobs must finish first."""


class ProblemError(Exception):
    """Raised by routes; answered as problem+json with the given status, kind and detail."""

    def __init__(self, status: int, kind: str, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}


def problem_response(status: int, kind: str, detail: str, headers: Mapping[str, str] | None = None,
                     **extensions: object) -> JSONResponse:
    # `error` repeats `detail` for the original service's clients, which read `{"error": "<reason>"}`.
    body = problem(kind, HTTPStatus(status).phrase, status, detail, error=detail, **extensions)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route may answer with (see document_problems)."""
    return {status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses}


def document_problems(app: FastAPI) -> None:
    """Make the OpenAPI document say what is sent: every 4xx/5xx as application/problem+json."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            problem_ref = {"$ref": "#/components/schemas/Problem"}
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                for status, response in operation.get("responses", {}).items():
                    if status[0] in "45":
                        response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": problem_ref}}
            for unused in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to replace the schema


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_: Request, error: ProblemError) -> JSONResponse:
        return problem_response(error.status, error.kind, error.detail, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else HTTPStatus(error.status_code).description
        kind = HTTPStatus(error.status_code).phrase.lower().replace(" ", "-")
        return problem_response(error.status_code, kind, detail, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        errors = [{"location": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in error.errors()]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors)
        return problem_response(422, "invalid-request", f"the request is invalid: {detail}", errors=errors)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, __: Exception) -> JSONResponse:
        # Starlette still logs the exception; the client gets a problem, not a bare "Internal Server Error".
        return problem_response(500, "internal-error", "the service failed to answer this request; it has been "
                                "logged, and retrying may help")

    @app.exception_handler(OutOfMemoryError)
    async def _store_full(_: Request, __: Exception) -> JSONResponse:
        return problem_response(429, "store-full", "Redis is full (its maxmemory): nothing of this request was kept; "
                                "retry when the queue has drained", {"Retry-After": str(STORE_FULL_RETRY_AFTER)})

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _store_down(_: Request, __: Exception) -> JSONResponse:
        return problem_response(503, "store-unavailable", "the job store (Redis) does not answer; try again shortly",
                                {"Retry-After": str(REDIS_RETRY_AFTER)})
