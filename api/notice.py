"""The decision-support notice on every answer: a header on all of them, since CSV, PNG and problem bodies have no
place for it (JSON results also carry it in their body, see api/schemas.py)."""

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.schemas import DISCLAIMER

NOTICE_HEADER = "Pneuradnet-Notice"


class NoticeHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_notice(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[NOTICE_HEADER] = DISCLAIMER
            await send(message)

        await self.app(scope, receive, send_with_notice)
