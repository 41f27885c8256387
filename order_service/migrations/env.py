"""Alembic environment of order_service (the shared runner does the work)."""

from order_service.models import Base
from shared.migrations import run_env

run_env(Base.metadata)
