"""The event bus's cost in the bench (issue 22, item 5): the fleet with its outbox relays off and on, the lag from an
event's commit to a consumer's effect, the backlog left and the events published per saga.

- The lag is order_service's histogram `events_lag_seconds{consumer=...}` (shared/bus.py: the event's time to the
  consumer's transaction). order_service_timeline applies every event of every service, so its histogram is the
  fleet's commit-to-effect lag. The bench reads the buckets before and after a phase and takes quantiles of the
  difference the way Prometheus's `histogram_quantile` does: linear interpolation within the bucket the rank falls
  in, so a quantile is as exact as its bucket is narrow (the mean, Δsum ÷ Δcount, is exact).
- "Drained" is what `customer-service check` says too: every service's `events_outbox_backlog` is 0, and each
  durable consumer has nothing pending or unacknowledged on the EVENTS stream (asked of NATS as the operator).
- Relays off is BUS_RELAY=false: every service with a database restarted with it, on its own port and database
  (customer_cli.fleet's processes), the consumers running but told of nothing new. The bench turns the relays off
  and on again around one phase per round rather than running a second fleet (two fleets on two cores measure each
  other) or switching a flag at run time (BUS_RELAY is read at start: the product has no such switch, and the bench
  measures the product's defaults).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import nats.js.errors
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from customer_cli.fleet import COMPONENTS, METRICS_HEADERS, Fleet
from shared.bus import BusConfig, connect
from shared.events import CONSUMERS, EVENTS_STREAM, durable_name

LAG_METRIC = "events_lag_seconds"
TIMELINE = durable_name("order_service", "timeline")  # sees every event: the fleet's commit-to-effect lag
DURABLES = tuple(durable_name(package, name) for package, names in CONSUMERS.items() for name in names)
# How long the bench waits for a backlog to drain before it says it did not.
DRAIN_TIMEOUT_SECS = 300.0
# Drained means drained this long: a commit whose relay has not woken yet (50 ms coalescing) leaves the gauge at 0
# for a moment, and a publish moves the stream's last sequence.
DRAIN_STABLE_SECS = 0.5
POLL_SECS = 0.25
# A service's SIGTERM before the bench kills it when relays go off or on. (order_service has been seen to take
# nats-py's 30-s drain_timeout to stop: its cancelled consumers' pull subscriptions are drained, and nothing reads
# their queues any more.)
STOP_GRACE_SECS = 10.0

Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending, +Inf last


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile (0 < q ≤ 1) of a histogram's cumulative buckets, as Prometheus's `histogram_quantile`: the
    rank q * total found in its bucket and interpolated linearly between the bucket's bounds (the first bucket's
    lower bound is 0). A rank in the +Inf bucket answers the highest finite bound (the true value is above it).
    None for an empty histogram."""
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], not {q}")
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def quantile_bucket(q: float, buckets: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """The bounds of the bucket the q-quantile falls in (what the interpolated value is sure of)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower = 0.0
    for bound, count in buckets:
        if count >= rank:
            return lower, bound
        lower = bound
    return lower, math.inf


def bucket_delta(before: Buckets, after: Buckets) -> Buckets:
    """What a histogram counted between two readings (bucket by bucket; a bound missing before counts from 0)."""
    earlier = dict(before)
    return tuple((bound, count - earlier.get(bound, 0.0)) for bound, count in after)


@dataclass
class Histogram:
    buckets: Buckets = ()
    sum: float = 0.0
    count: float = 0.0

    def since(self, before: Histogram | None) -> Histogram:
        if before is None or before.count > self.count:  # the process restarted in between: its counts began again
            return self
        return Histogram(bucket_delta(before.buckets, self.buckets), self.sum - before.sum, self.count - before.count)


@dataclass
class ServiceBus:
    """One service's bus metrics at one moment."""

    backlog: float | None = None  # events_outbox_backlog (None: no relay has measured it)
    published: float = 0.0
    duplicates: float = 0.0
    lag: dict[str, Histogram] = field(default_factory=dict)  # consumer → its histogram


def parse_metrics(text: str) -> ServiceBus:
    """The bus's figures in one /metrics answer (Prometheus text format)."""
    figures = ServiceBus()
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "events_outbox_backlog":
                figures.backlog = sample.value
            elif sample.name == "events_published_total":
                figures.published = sample.value
            elif sample.name == "events_duplicates_total":
                figures.duplicates = sample.value
            elif sample.name.startswith(LAG_METRIC):
                consumer = sample.labels.get("consumer", "")
                histogram = figures.lag.setdefault(consumer, Histogram())
                if sample.name == f"{LAG_METRIC}_bucket":
                    buckets.setdefault(consumer, []).append((float(sample.labels["le"]), sample.value))
                elif sample.name == f"{LAG_METRIC}_sum":
                    histogram.sum = sample.value
                elif sample.name == f"{LAG_METRIC}_count":
                    histogram.count = sample.value
    for consumer, rows in buckets.items():
        figures.lag[consumer].buckets = tuple(sorted(rows))
    return figures


Snapshot = dict[str, ServiceBus]  # package → its figures


async def snapshot(services: dict[str, str]) -> Snapshot:
    """Every service's bus figures (a service that does not answer is left out)."""
    async def one(client: httpx.AsyncClient, url: str) -> ServiceBus | None:
        try:
            answer = await client.get(f"{url}/metrics", headers=METRICS_HEADERS)
        except httpx.HTTPError:
            return None
        return parse_metrics(answer.text) if answer.status_code == 200 else None

    async with httpx.AsyncClient(timeout=10) as client:
        found = await asyncio.gather(*(one(client, url) for url in services.values()))
    return {package: figures for package, figures in zip(services, found, strict=True) if figures is not None}


def lag_figures(before: Snapshot, after: Snapshot) -> dict[str, dict[str, Any]]:
    """Per consumer, over what it applied between the snapshots: count, p50/p99 (ms, interpolated in the bucket),
    the bucket p99 fell in (ms), and the mean (exact)."""
    out: dict[str, dict[str, Any]] = {}
    for package, figures in after.items():
        for consumer, histogram in figures.lag.items():
            delta = histogram.since(before.get(package, ServiceBus()).lag.get(consumer))
            if not delta.count:
                continue
            quantiles = {f"p{round(q * 100)}_ms": histogram_quantile(q, delta.buckets) for q in (0.5, 0.99)}
            bucket = quantile_bucket(0.99, delta.buckets)
            out[consumer] = {"events": delta.count, "mean_ms": round(delta.sum / delta.count * 1000, 1),
                             **{k: round(v * 1000, 1) if v is not None else None for k, v in quantiles.items()},
                             "p99_bucket_ms": [round(b * 1000) for b in bucket] if bucket else None}
    return out


def published(figures: Snapshot) -> float:
    return sum(service.published for service in figures.values())


def applied(figures: Snapshot, consumer: str) -> float:
    """How many events `consumer` has applied so far (its lag histogram's count)."""
    return sum(service.lag[consumer].count for service in figures.values() if consumer in service.lag)


def backlogs(figures: Snapshot) -> dict[str, float]:
    """events_outbox_backlog of each service that relays (a service with no relay running measures none)."""
    return {package: service.backlog for package, service in sorted(figures.items()) if service.backlog is not None}


class BusWatch:
    """The bench's view of the bus: the metrics of the services that relay or consume (those with a database), and
    the durable consumers' state asked of NATS."""

    def __init__(self, services: dict[str, str], config: BusConfig | None) -> None:
        self.services = {package: url for package, url in services.items()
                         if package in COMPONENTS and COMPONENTS[package].database}
        self.config = config
        self._nc: NATS | None = None

    async def _nats(self) -> NATS | None:
        if self.config is None or not self.config.url:
            return None
        if self._nc is None or not self._nc.is_connected:
            try:
                self._nc = await connect(self.config, reconnect_forever=False)
            except Exception:  # a running stack whose bus the bench may not reach: the outboxes alone say it
                self.config = None
                return None
        return self._nc

    async def consumers(self) -> tuple[dict[str, int], int] | None:
        """Per durable consumer, its messages not yet delivered or acknowledged; and the stream's last sequence."""
        nc = await self._nats()
        if nc is None:
            return None
        js = nc.jetstream(timeout=5)
        pending = {}
        for durable in DURABLES:
            try:
                info = await js.consumer_info(EVENTS_STREAM, durable)
            except nats.js.errors.NotFoundError:  # its service has not subscribed yet: nothing applied
                pending[durable] = -1
                continue
            pending[durable] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        stream = await js.stream_info(EVENTS_STREAM)
        return pending, int(stream.state.last_seq)

    async def drained(self, limit_secs: float = DRAIN_TIMEOUT_SECS) -> tuple[Snapshot, float, bool]:
        """Until every outbox is empty and every consumer has applied what the stream holds, for
        DRAIN_STABLE_SECS; the last snapshot, the seconds waited and whether it drained."""
        started = time.monotonic()
        stable_since: float | None = None
        last_seq = -1
        figures: Snapshot = {}
        while True:
            consumers = await self.consumers()
            seq = consumers[1] if consumers else 0
            # The consumers first: a scrape of every service's /metrics costs them CPU the phase is charged with.
            done = consumers is None or all(v == 0 for v in consumers[0].values())
            if done:
                figures = await snapshot(self.services)
                done = all(v == 0 for v in backlogs(figures).values())
            now = time.monotonic()
            if not done:
                stable_since = None
            elif stable_since is None or seq != last_seq:
                stable_since = now
            elif now - stable_since >= DRAIN_STABLE_SECS:
                return figures, round(now - started, 1), True
            last_seq = seq
            if now - started > limit_secs:
                return figures or await snapshot(self.services), round(now - started, 1), False
            await asyncio.sleep(POLL_SECS)

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()


def set_relays(fleet: Fleet, pids: dict[str, int], on: bool) -> float:
    """Restart every service with a database with BUS_RELAY on or off (each on its port and database, auth_service
    first as at start-up), until the gateway routes to them again; `pids` follows. The seconds it took."""
    started = time.monotonic()
    procs = [proc for proc in fleet.processes.values() if COMPONENTS[proc.package].database]
    for proc in procs:
        proc.env["BUS_RELAY"] = "true" if on else "false"
        proc.send(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECS
    for proc in procs:
        proc.wait_stopped(deadline - time.monotonic())
    ordered = sorted(procs, key=lambda proc: proc.package != "auth_service")  # the others fetch its keys
    ordered[0].start()
    fleet.wait_up(ordered[0])
    for proc in ordered[1:]:
        proc.start()
    for proc in ordered[1:]:
        fleet.wait_up(proc)
    fleet.wait_routable()
    for proc in procs:
        assert proc.popen is not None
        pids[proc.name] = proc.popen.pid
    return round(time.monotonic() - started, 1)


def summarize(rounds: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """min / median / max of each figure over the rounds (the lower median of an even count, as the bench's
    other repeats)."""
    names: list[str] = []
    for row in rounds:
        names.extend(name for name in row if name not in names)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        values = sorted(row[name] for row in rounds if isinstance(row.get(name), int | float))
        if values:
            out[name] = {"min": values[0], "median": values[(len(values) - 1) // 2], "max": values[-1],
                         "rounds": len(values)}
    return out
