"""Alembic environment of shipment_service (the shared runner does the work)."""

from shared.migrations import run_env
from shipment_service.models import Base

run_env(Base.metadata)
