"""saga_orchestrator settings (environment variables, see shared.settings)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    app_name: str = "SAGA-ORCHESTRATOR"
    port: int = 8007
    sqlite_database = "saga_orchestrator"
    service_client_id: str = "saga-orchestrator"
    holds_service_secret = True  # its calls to the participants carry its service token

    # A step's transient failures (timeout, connection error, 5xx, no UP instance) are retried
    # with exponential backoff and jitter until this deadline, counted from the step's first attempt
    # as recorded in the saga's history (a resumed saga does not start it again); then the step
    # counts as failed, its outcome unknown.
    step_deadline_secs: float = Field(default=10.0, gt=0)
    # One HTTP attempt may take at most this long (capped by what is left of the deadline).
    step_attempt_timeout_secs: float = Field(default=5.0, gt=0)
    # Compensations (and replays that settle an unknown outcome) are retried longer, counted the same
    # way: giving up leaves the saga for an operator.
    compensation_deadline_secs: float = Field(default=60.0, gt=0)
    retry_initial_secs: float = Field(default=0.1, gt=0)
    retry_max_secs: float = Field(default=2.0, gt=0)

    # A replica owns a saga while its lease runs; it renews the lease while driving it.
    lease_secs: float = Field(default=15.0, gt=0)
    # How often unfinished sagas whose lease expired are looked for (crash recovery).
    recovery_interval_secs: float = Field(default=5.0, gt=0)
    max_active_sagas: int = Field(default=200, gt=0)

    # What one customer may hold (stock allocated, a carrier's capacity) while a saga runs: an order of at
    # most this many units (422 beyond), and at most this many unfinished sagas at once (429 beyond).
    # Admins and the fleet's services are not bound.
    max_units_per_order: int = Field(default=20, gt=0)
    max_unfinished_sagas_per_customer: int = Field(default=3, gt=0)

    # Threads that run the (synchronous) eventsourcing library.
    event_store_threads: int = Field(default=4, gt=0)

    # placeCustomerOrder prices from products inventory listed at most this long ago (saga_orchestrator/catalogue.py;
    # 0 asks inventory every time). An unknown SKU is asked for every time, so it is always refused.
    catalogue_cache_secs: float = Field(default=2.0, ge=0, le=2.0)
