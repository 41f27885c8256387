"""Alembic environment of inventory_service (the shared runner does the work)."""

from inventory_service.models import Base
from shared.migrations import run_env

run_env(Base.metadata)
