from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it says nothing of Redis or the workers)."""
    return {"status": "ok"}
