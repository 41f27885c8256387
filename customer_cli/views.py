"""How the CLI shows sagas and load runs (rich tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from customer_cli.load import ERROR, OUTCOMES, LoadReport, percentile
from customer_cli.orders import timeline

STATUS_STYLES = {
    "COMPLETED": "green", "SUCCEEDED": "green", "STARTED": "cyan", "RUNNING": "cyan", "PENDING": "dim",
    "COMPENSATING": "yellow", "COMPENSATED": "yellow", "COMPENSATION_FAILED": "bold red", "FAILED": "red",
    ERROR: "bold red",
}


def status_text(status: str | None) -> Text:
    return Text(status or "", style=STATUS_STYLES.get(status or "", ""))


def money(minor: int, currency: str) -> str:
    # Two minor digits covers the catalogue's currencies (EUR); the API gives integers in minor units.
    return f"{minor / 100:,.2f} {currency}"


def _time(value: str | None) -> str:
    if not value:
        return ""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _moment(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _clock(value: str | datetime | None) -> str:
    moment = _moment(value)
    return moment.astimezone().strftime("%H:%M:%S.%f")[:-3] if moment else ""


def _took(start: str | datetime | None, end: str | datetime | None) -> str:
    begun, ended = _moment(start), _moment(end)
    if begun is None or ended is None:
        return ""
    return f"{(ended - begun).total_seconds() * 1000:.0f} ms"


def saga_list(page: dict[str, Any], since: datetime | None = None) -> Table:
    created = f" created since {since.astimezone().strftime('%Y-%m-%d %H:%M:%S')}" if since else ""
    table = Table(title=f"Sagas{created} ({len(page['items'])} of {page['total']})", title_justify="left")
    table.add_column("created", no_wrap=True)
    table.add_column("saga", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True)
    table.add_column("customer")
    table.add_column("order")
    table.add_column("total", justify="right", no_wrap=True)
    for saga in page["items"]:
        table.add_row(_time(saga["created_at"]), saga["saga_id"], status_text(saga["status"]),
                      saga["customer_id"][:8], (saga.get("order_id") or "—")[:8],
                      money(saga["total_minor"], saga["currency"]))
    return table


def saga_facts(saga: dict[str, Any]) -> Table:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    address = saga.get("shipping_address") or {}
    rows: list[tuple[str, str | Text]] = [
        ("saga", saga["saga_id"]),
        ("status", status_text(saga["status"])),
        ("customer", saga["customer_id"]),
        ("order", saga.get("order_id") or "—"),
        ("total", money(saga["total_minor"], saga["currency"])),
        ("lines", ", ".join(f"{line['quantity']} x {line['sku']}" for line in saga.get("lines") or [])),
        ("ship to", ", ".join(str(address[k]) for k in ("name", "city", "country") if address.get(k))),
        ("created", _time(saga["created_at"])),
        ("updated", _time(saga["updated_at"])),
    ]
    for key in ("payment_id", "carrier_code", "tracking_number", "failure_reason"):
        if saga.get(key):
            rows.append((key.replace("_", " "), Text(str(saga[key]), style="red" if key == "failure_reason" else "")))
    for name, value in rows:
        facts.add_row(name, value)
    return facts


def saga_timeline(saga: dict[str, Any]) -> Table:
    """Steps, then compensations, in the order they ran, with start, end, attempts and errors (from the events)."""
    table = Table(title="Timeline", title_justify="left")
    table.add_column("step", no_wrap=True)
    for column in ("status", "started", "ended"):
        table.add_column(column, no_wrap=True)
    table.add_column("took", justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("error", overflow="fold", max_width=60)
    rows = timeline(saga["history"])
    reached = {row.step for row in rows if row.kind == "step"}
    for row in rows:
        name = Text(f"↩ undo {row.step}", style="yellow") if row.kind == "compensation" else Text(row.step)
        if row.retried:
            name.append(" (retried)", style="dim")
        table.add_row(name, status_text(row.status), _clock(row.started), _clock(row.ended),
                      _took(row.started, row.ended), str(row.attempts or ""), row.error or "")
    not_reached = [step["step"] for step in saga["steps"] if step["step"] not in reached]
    if not_reached:
        table.caption = f"not reached: {', '.join(not_reached)}"
    return table


def saga_events(saga: dict[str, Any]) -> Table:
    table = Table(title="Events", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("at")
    table.add_column("event")
    table.add_column("data", overflow="fold")
    for event in saga["history"]:
        data = event.get("data") or {}
        brief = ", ".join(f"{k}={v}" for k, v in data.items() if k in ("step", "attempts", "error", "reason", "plan"))
        table.add_row(str(event["version"]), _clock(event["timestamp"]), event["type"], brief)
    return table


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.0f} ms"


def load_summary(report: LoadReport) -> Table:
    table = Table(title=f"{len(report.results)} orders in {report.wall_secs:.1f} s — "
                        f"{report.throughput:.1f} orders/s", title_justify="left")
    table.add_column("outcome")
    table.add_column("orders", justify="right")
    for column in ("p50", "p95", "p99", "max"):
        table.add_column(column, justify="right")
    counts = report.counts
    rows = [(status_text(o), counts[o], report.latencies(o) if o != ERROR else []) for o in OUTCOMES]
    every = report.latencies()
    rows.append((Text("every outcome", style="bold"), len(every), every))
    for label, count, latencies in rows:
        table.add_row(label, str(count), _secs(percentile(latencies, 50)), _secs(percentile(latencies, 95)),
                      _secs(percentile(latencies, 99)), _secs(latencies[-1] if latencies else None))
    return table


# -- the bus (customer_cli/event_bus.py) -----------------------------------------------------------------------

_FAMILY_STYLES = {"order": "cyan", "stock": "blue", "product": "blue", "payment": "magenta", "carrier": "yellow",
                  "shipment": "green", "user": "white", "saga": "bright_black"}


def event_line(columns: list[str]) -> Text:
    """One event of `events tail`: time, type (coloured by its family), subject, orderid, summary."""
    moment, event_type, subject, order_id, summary = columns
    line = Text(f"{moment:<24} ", style="dim")
    line.append(f"{event_type:<28} ", style=_FAMILY_STYLES.get(event_type.split(".")[0], "red"))
    line.append(f"{subject:<36} {order_id:<36} ")
    line.append(summary, style="dim" if event_type in ("-", "") else "")
    return line


def dead_letter_table(page: Any) -> Table:
    """`events dead-letters`: a customer_cli.event_bus.DeadLetterPage, oldest first."""
    shown = len(page.letters)
    table = Table(title=f"Dead letters: {page.total} in the stream"
                  + (f", the oldest {shown} shown" if shown < page.total else ""), title_justify="left")
    for column in ("seq", "dead since", "consumer", "type", "subject", "orderid", "deliveries", "error"):
        table.add_column(column, overflow="fold")
    for letter in page.letters:
        event = letter.event
        table.add_row(str(letter.sequence), letter.at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if letter.at else "",
                      letter.consumer, event.type if event else "(not a CloudEvent)", event.subject if event else "",
                      (event.orderid or "") if event else "", str(letter.deliveries), Text(letter.error, style="red"))
    return table
