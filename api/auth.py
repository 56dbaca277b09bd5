"""API keys: who is asking. A key sees only its own jobs and batches; keys are never logged or stored."""

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request

from api.deps import SettingsDep
from api.problems import ProblemError


def owner_of(key: str) -> str:
    """What the job store keeps of a key: enough to tell owners apart, useless for authenticating."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def current_owner(request: Request, settings: SettingsDep) -> str:
    """The caller's owner id; empty when the service runs without keys (then everyone is one owner)."""
    keys = settings.api_key_list
    if not keys:
        return ""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ProblemError(401, "unauthorized", "this service needs an API key: send `Authorization: Bearer <key>`",
                           headers={"WWW-Authenticate": "Bearer"})
    # Compare against every key, each in constant time, so timing tells nothing of which key nearly matched.
    matches = [hmac.compare_digest(token.encode(), key.encode()) for key in keys]
    if not any(matches):
        raise ProblemError(401, "unauthorized", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})
    return owner_of(token)


OwnerDep = Annotated[str, Depends(current_owner)]
