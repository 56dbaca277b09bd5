"""Refusing request bodies over MAX_UPLOAD_BYTES before they are parsed or spooled to disk."""

import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Answers 413 when Content-Length says too much, and stops reading a body that grows past the limit.

    A chunked body has no Content-Length: it is refused while it arrives. The multipart parser then sees the read
    fail and FastAPI answers 400 "error parsing the body"; that answer is dropped here for the 413 that says why.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        seen = 0
        exceeded = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                exceeded = True
                raise BodyTooLarge
            return message

        async def send_unless_exceeded(message: Message) -> None:
            if not exceeded:
                await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, counting_receive, send_unless_exceeded)
        if exceeded:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(413, "upload-too-large", f"the request body is larger than the limit of "
                                    f"{self.max_bytes:,} bytes (MAX_UPLOAD_BYTES); split it into several requests",
                                    {"Connection": "close"})
        await response(scope, receive, send)
