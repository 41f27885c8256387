"""The bench's reading of the bus's lag histogram (bench/bus.py): quantiles from cumulative buckets as Prometheus's
histogram_quantile computes them, the difference of two readings, a real /metrics text parsed."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from bench.bus import Histogram as Read
from bench.bus import applied, bucket_delta, histogram_quantile, parse_metrics, quantile_bucket, summarize
from shared.bus import LAG

INF = math.inf


def test_quantile_interpolates_within_the_bucket_the_rank_falls_in() -> None:
    # 100 observations: 50 up to 0.1 s, 40 in (0.1, 0.5], 10 in (0.5, 1].
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (INF, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)  # rank 50: the first bucket's top
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # half-way into [0, 0.1]
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.3)  # rank 70: half-way into (0.1, 0.5]
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.95)  # rank 99: 9 of the last bucket's 10
    assert histogram_quantile(1.0, buckets) == pytest.approx(1.0)


def test_the_bucket_a_quantile_falls_in_bounds_what_the_interpolation_is_sure_of() -> None:
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (INF, 100.0)]
    assert quantile_bucket(0.5, buckets) == (0.0, 0.1)
    assert quantile_bucket(0.7, buckets) == (0.1, 0.5)
    assert quantile_bucket(0.99, buckets) == (0.5, 1.0)
    assert quantile_bucket(0.99, [(1.0, 90.0), (INF, 100.0)]) == (1.0, INF)
    assert quantile_bucket(0.99, []) is None


def test_empty_buckets_below_the_rank_are_skipped() -> None:
    buckets = [(0.005, 0.0), (0.01, 0.0), (0.25, 4.0), (0.5, 4.0), (INF, 4.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01 + 0.24 * 0.5)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.01 + 0.24 * 0.99)


def test_a_rank_beyond_the_last_finite_bound_answers_that_bound() -> None:
    assert histogram_quantile(0.99, [(1.0, 90.0), (60.0, 95.0), (INF, 100.0)]) == 60.0


def test_an_empty_histogram_has_no_quantile_and_q_is_checked() -> None:
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None
    with pytest.raises(ValueError):
        histogram_quantile(0.0, [(1.0, 1.0), (INF, 1.0)])


def test_the_difference_of_two_readings_is_what_was_counted_between_them() -> None:
    before = ((0.1, 10.0), (1.0, 12.0), (INF, 12.0))
    after = ((0.1, 15.0), (1.0, 22.0), (INF, 23.0))
    assert bucket_delta(before, after) == ((0.1, 5.0), (1.0, 10.0), (INF, 11.0))
    phase = Read(after, 9.0, 23.0).since(Read(before, 2.0, 12.0))
    assert (phase.count, phase.sum) == (11.0, 7.0)
    # A process restarted between the readings counted from zero again: the later reading is the phase's.
    restarted = Read(((0.1, 1.0), (INF, 2.0)), 0.5, 2.0)
    assert restarted.since(Read(before, 2.0, 12.0)) is restarted


def test_a_services_metrics_text_is_read() -> None:
    registry = CollectorRegistry()
    lag = Histogram("events_lag_seconds", "lag", ["consumer"], buckets=LAG._upper_bounds[:-1], registry=registry)
    Gauge("events_outbox_backlog", "backlog", registry=registry).set(3)
    for value in (0.02, 0.02, 0.3, 0.9):
        lag.labels("order_service_timeline").observe(value)
    lag.labels("order_service_parcel").observe(0.04)

    figures = parse_metrics(generate_latest(registry).decode())

    assert figures.backlog == 3
    timeline = figures.lag["order_service_timeline"]
    assert (timeline.count, timeline.sum) == (4.0, pytest.approx(1.24))
    assert timeline.buckets[-1] == (INF, 4.0)
    assert [b for b, _ in timeline.buckets] == sorted(b for b, _ in timeline.buckets)
    assert histogram_quantile(0.5, timeline.buckets) == pytest.approx(0.025)  # rank 2: the top of (0.01, 0.025]
    assert 0.75 < (histogram_quantile(0.99, timeline.buckets) or 0) <= 1.0
    assert figures.lag["order_service_parcel"].count == 1
    assert applied({"order_service": figures, "gateway": parse_metrics("")}, "order_service_timeline") == 4


def test_summarize_gives_min_median_max_over_the_rounds() -> None:
    rounds: list[dict[str, Any]] = [{"ratio": 1.08, "lag": None}, {"ratio": 1.02, "lag": 400.0},
                                    {"ratio": 1.2, "lag": 600.0}]
    spread = summarize(rounds)
    assert spread["ratio"] == {"min": 1.02, "median": 1.08, "max": 1.2, "rounds": 3}
    assert spread["lag"] == {"min": 400.0, "median": 400.0, "max": 600.0, "rounds": 2}  # the lower median
