"""Schemathesis hooks for tests/api/test_openapi.py (loaded through SCHEMATHESIS_HOOKS): a STOW-RS body is
documented as `multipart/related; type="application/dicom"`, which schemathesis cannot write by itself."""

import schemathesis


@schemathesis.serializer("multipart/related")
def as_raw_body(_ctx: object, value: object) -> bytes:
    """The generated body sent as it is: whatever it is, the route must answer it with a documented problem."""
    return value if isinstance(value, bytes) else str(value).encode()
