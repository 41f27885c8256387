"""The CLI's view of the bus, its pure parts: which subject `events tail --type` follows, how an event reads in one
line, the event catalogue's table (README.md carries it as generated), and whom the commands connect as."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from customer_cli import event_bus, local_secrets
from customer_cli.main import operator_bus
from customer_cli.nats import OPERATOR_USER
from customer_cli.processes import ROOT
from shared.events import CATALOGUE, OrderLineAdded, ShipmentDelivered, envelope


def test_readme_carries_the_generated_catalogue() -> None:
    embedded = event_bus.embedded_catalogue((ROOT / "README.md").read_text())
    assert embedded is not None, "README.md lost its catalogue markers"
    assert embedded == event_bus.catalogue_markdown(), (
        "README.md's event catalogue is stale: run `customer-service events catalogue --write README.md`")


def test_the_catalogue_has_a_row_per_event_type_with_its_consumers() -> None:
    table = event_bus.catalogue_markdown().splitlines()
    assert len(table) == 2 + len(CATALOGUE)
    delivered = next(row for row in table if row.startswith("| `shipment.delivered.v1`"))
    cells = [cell.strip() for cell in delivered.strip("|").split("|")]
    assert cells == ["`shipment.delivered.v1`", "`events.shipment.delivered.v1`", "shipment_service",
                     "order_service (parcel, timeline)", "1", ShipmentDelivered.summary]
    registered = next(row for row in table if row.startswith("| `user.registered.v1`"))
    assert "| — |" in registered  # nobody reacts to it (yet)


def test_writing_the_catalogue_replaces_only_the_table_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# before\n\n{event_bus.CATALOGUE_START}\n| stale |\n{event_bus.CATALOGUE_END}\n\nafter\n")
    assert event_bus.write_catalogue(readme) is True
    text = readme.read_text()
    assert text.startswith("# before\n\n") and text.endswith("\n\nafter\n") and "stale" not in text
    assert event_bus.embedded_catalogue(text) == event_bus.catalogue_markdown()
    assert event_bus.write_catalogue(readme) is False  # nothing to change the second time
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        event_bus.write_catalogue(readme)


@pytest.mark.parametrize(("wanted", "subject"), [
    (None, "events.>"),
    ("order.confirmed", "events.order.confirmed.*"),  # every version of it
    ("order.confirmed.v1", "events.order.confirmed.v1"),
    ("shipment", "events.shipment.>"),
    ("events.shipment", "events.shipment.>"),
])
def test_tail_type_is_an_event_a_version_or_a_family(wanted: str | None, subject: str) -> None:
    assert event_bus.subject_filter(wanted) == subject


@pytest.mark.parametrize("wanted", ["parcel", "order.confirmed.v9", "order.>"])
def test_tail_refuses_a_type_the_catalogue_does_not_know(wanted: str) -> None:
    with pytest.raises(ValueError, match="a family: carrier, order"):
        event_bus.subject_filter(wanted)


def test_an_event_reads_in_one_line_without_repeating_its_ids() -> None:
    event = envelope(OrderLineAdded(order_id="order-1", line_ids=["l1", "l2"], skus=["KB-MECH-87", "MS-01"],
                                    total_minor=15900), "order-1", order_id="order-1",
                     time=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    seen = event_bus.Seen.of(event.nats_subject, event.model_dump_json().encode())
    assert seen.line() == ["2026-01-02T03:04:05.678Z", "order.line_added.v1", "order-1", "order-1",
                           "line_ids=l1,l2 skus=KB-MECH-87,MS-01 total_minor=15900"]
    long = envelope(OrderLineAdded(order_id="order-1", line_ids=[f"line-{n}" for n in range(40)], skus=[],
                                   total_minor=1), "order-1", time=datetime.now(UTC))
    summary = event_bus.summarise(long)
    assert len(summary) == event_bus.SUMMARY_CHARS and summary.endswith("…")


def test_a_message_that_is_no_cloudevent_is_shown_not_fatal() -> None:
    seen = event_bus.Seen.of("events.order.created.v1", b'{"hello": "world"}')
    assert seen.event is None
    assert seen.line()[:2] == ["-", "order.created.v1"] and "not a CloudEvent" in seen.line()[4]
    assert '"error"' in seen.json()


def test_the_commands_connect_as_the_local_fleets_operator_or_as_told(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATS_URL", raising=False)
    with pytest.raises(event_bus.BusUnreachable, match="no local fleet"):
        operator_bus("", "", "", tmp_path, 0)
    made = local_secrets.load_or_create(tmp_path)  # what `up` made at its first run
    local = operator_bus("", "", "", tmp_path, 10)
    assert (local.url, local.user, local.password) == ("nats://127.0.0.1:4232", OPERATOR_USER,
                                                       made.nats_passwords[OPERATOR_USER])
    assert local.inbox_prefix == "_INBOX_operator"  # the one inbox its permissions let it read
    elsewhere = operator_bus("nats://bus.example:4222", "", "s3cret", tmp_path, 0)
    assert (elsewhere.url, elsewhere.user, elsewhere.password) == ("nats://bus.example:4222", OPERATOR_USER, "s3cret")
