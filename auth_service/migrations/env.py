"""Alembic environment of auth_service (the shared runner does the work)."""

from auth_service.models import Base
from shared.migrations import run_env

run_env(Base.metadata)
