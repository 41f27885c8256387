"""Saga metrics (module-level, served by the shared /metrics endpoint): outcomes, step latency, attempts."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SAGAS_STARTED = Counter("saga_started_total", "Sagas started (placeCustomerOrder accepted)")
SAGAS_FINISHED = Counter("saga_finished_total", "Sagas that reached a terminal state", ["outcome"])
STEP_LATENCY = Histogram(
    "saga_step_duration_seconds",
    "Time for one attempt of a saga step, replay or compensation (kind: the phase)",
    ["step", "kind", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STEP_ATTEMPTS = Counter("saga_step_attempts_total", "HTTP attempts of steps and compensations", ["call", "result"])
SAGA_TAKEOVERS = Counter(
    "saga_driver_stops_total", "Times a replica stopped driving a saga it lost (lease or version conflict)", ["reason"]
)
EVENT_STORE_SAVES = Counter("saga_event_store_saves_total",
                            "Saga saves (the events of one step's outcome and of the next attempt)")
EVENT_STORE_WRITES = Counter("saga_event_store_writes_total", "Event-store transactions (concurrent saves share one)")
EVENT_STORE_EVENTS = Counter("saga_event_store_events_total", "Saga events written to the event store")
