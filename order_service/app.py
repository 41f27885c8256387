"""order_service app factory."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from order_service import service
from order_service.api import router
from order_service.settings import Settings
from shared.service_app import create_service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(settings or Settings(), routers=[router], package_dir=Path(__file__).parent,
                              consumers=[("parcel", service.follow_parcel), ("timeline", service.record_in_timeline)])
