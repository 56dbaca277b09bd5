"""RFC 9457 problem details: the one shape of every error, in HTTP answers and in failed jobs."""

from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem(kind: str, title: str, status: int, detail: str, **extensions: Any) -> dict[str, Any]:
    """A problem object; `kind` names its type, e.g. `invalid-image`."""
    return {"type": f"urn:pneuradnet:problem:{kind}", "title": title, "status": status, "detail": detail,
            **extensions}
