"""Alembic environment of saga_orchestrator (the shared runner does the work).

Only the saga index lives in these migrations; the event store's tables belong to `eventsourcing`,
which creates them itself.
"""

from saga_orchestrator.models import Base
from shared.migrations import run_env

run_env(Base.metadata)
