"""RFC 9457 problem details: the one shape of every error, in HTTP answers and in failed jobs."""

from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"

PROBLEM_TYPE_PREFIX = "urn:pneuradnet:problem:"
"""What every problem type starts with; the rest is its kind."""


def problem(kind: str, title: str, status: int, detail: str, **extensions: Any) -> dict[str, Any]:
    """A problem object; `kind` names its type, e.g. `invalid-image`."""
    return {"type": f"{PROBLEM_TYPE_PREFIX}{kind}", "title": title, "status": status, "detail": detail,
            **extensions}
