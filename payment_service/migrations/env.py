"""Alembic environment of payment_service (the shared runner does the work)."""

from payment_service.models import Base
from shared.migrations import run_env

run_env(Base.metadata)
