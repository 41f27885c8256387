"""The smallest service: FastAPI, one route, a small JSON answer, no middleware, no database (bench/floor.py)."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/ping")
async def ping() -> dict[str, object]:
    return {"ok": True, "service": "floor"}
