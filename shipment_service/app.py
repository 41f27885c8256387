"""shipment_service app factory."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from shared.service_app import create_service_app
from shipment_service.api import router
from shipment_service.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(settings or Settings(), routers=[router], package_dir=Path(__file__).parent)
