"""Alembic environment of carrier_service (the shared runner does the work)."""

from carrier_service.models import Base
from shared.migrations import run_env

run_env(Base.metadata)
