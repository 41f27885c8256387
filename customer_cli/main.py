"""`customer-service` CLI (typer): run the local fleet, seed it, place and follow orders, load it, look at sagas."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import nats.errors
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import make_url

from customer_cli import event_bus, invariants, local_secrets, views
from customer_cli.fleet import COMPONENTS, DEMO_ADMIN_EMAIL, local_fleet
from customer_cli.gateway_client import GatewayClient, GatewayError
from customer_cli.load import ERROR, OUTCOMES, LoadPlan, OrderResult, percentile, run_load
from customer_cli.nats import OPERATOR_USER
from customer_cli.orders import EventNarrator, choose_lines, describe, follow, new_customer, order_body
from shared.bus import BusConfig

app = typer.Typer(help="customer-service: the order-to-shipment fleet.", no_args_is_help=True)
sagas_app = typer.Typer(help="List sagas (admin), or show one with its steps: `sagas show ID`.")
app.add_typer(sagas_app, name="sagas")
events_app = typer.Typer(help="The event bus: follow it (tail), its dead letters, its catalogue.",
                         no_args_is_help=True)
app.add_typer(events_app, name="events")
ROOT = Path(__file__).resolve().parent.parent
# Piped output (logs, CI, tests) is not cut at 80 columns: tables of saga ids need more.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
console = Console(highlight=False, width=_WIDTH)
errors = Console(stderr=True, highlight=False, width=_WIDTH)

SAGA_STATES = ["STARTED", "RUNNING", "COMPLETED", "COMPENSATING", "COMPENSATED", "COMPENSATION_FAILED"]

# Options every command that talks to the fleet takes.
Gateway = Annotated[str, typer.Option("--gateway", envvar="CS_GATEWAY_URL", help="The gateway's base URL.")]
AdminEmail = Annotated[str, typer.Option("--admin-email", envvar="CS_ADMIN_EMAIL",
                                         help="Admin account (default: the local runner's demo admin).")]
AdminPassword = Annotated[str, typer.Option("--admin-password", envvar="CS_ADMIN_PASSWORD",
                                            help="Its password (default: the local runner's, from var/secrets.json).")]
AsAdmin = Annotated[bool, typer.Option("--as-admin", help="Order as the admin account instead of a customer.")]
Email = Annotated[str | None, typer.Option("--email", help="Order as this customer (with --password).")]
Password = Annotated[str | None, typer.Option("--password", help="The customer's password.")]
Token = Annotated[str | None, typer.Option("--token", envvar="CS_TOKEN", help="Order with this access token.")]
Skus = Annotated[list[str] | None, typer.Option("--sku", help="A SKU to order (repeat for more lines); "
                                                "default: the catalogue's best-stocked product.")]
Quantities = Annotated[list[int] | None, typer.Option("--qty", help="Quantity: one for every --sku, or one each.")]
Country = Annotated[str, typer.Option("--country", help="Shipping country (ISO code); carriers are chosen by it.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
Since = Annotated[str | None, typer.Option(
    "--since", help="Only sagas created since: an ISO time, or 90s / 15m / 2h / 1d ago.")]
SagaState = Annotated[str | None, typer.Option(
    "--status", help=f"Only sagas in this state: {', '.join(SAGA_STATES)}.", case_sensitive=False)]
SagaLimit = Annotated[int, typer.Option(min=1, max=500, help="How many (newest first).")]
DEFAULT_GATEWAY = "http://127.0.0.1:8080"


@contextmanager
def reported_errors() -> Iterator[None]:
    """A refusal or an unreachable gateway ends the command with its reason, not a traceback."""
    try:
        yield
    except GatewayError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    except TimeoutError as exc:
        errors.print(f"[red]Timed out: {exc}[/red]")
        raise typer.Exit(1) from None


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str | None) -> datetime | None:
    """`--since`: an ISO 8601 time (UTC when no zone is given), or a span back from now: 90s, 15m, 2h, 1d."""
    if not value:
        return None
    text = value.strip()
    if text[:-1].isdigit() and text[-1:].lower() in _SINCE_UNITS:
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * _SINCE_UNITS[text[-1].lower()])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter("an ISO 8601 time, or a span such as 90s, 15m, 2h, 1d", param_hint="--since") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def local_admin_password(given: str) -> str:
    """--admin-password, else the one the local runner generated at its first run (var/secrets.json)."""
    if given:
        return given
    made = local_secrets.read(Path("var").resolve())
    if made is None:
        raise GatewayError("Give --admin-password (no local runner's var/secrets.json here).")
    return made.admin_password


def admin_client(gateway: str, admin_email: str, admin_password: str) -> GatewayClient:
    client = GatewayClient(gateway)
    client.login(admin_email, local_admin_password(admin_password))
    return client


def customer_client(gateway: str, email: str | None, password: str | None, token: str | None, as_admin: bool,
                    admin_email: str, admin_password: str) -> tuple[GatewayClient, str]:
    """A client logged in as whoever orders, and who that is.

    --token, else --email/--password, else the admin with --as-admin, else a customer registered for the purpose.
    """
    client = GatewayClient(gateway, token)
    if token:
        return client, "the --token's user"
    if email or password:
        if not (email and password):
            raise GatewayError("Give both --email and --password.")
        client.login(email, password)
        return client, email
    if as_admin:
        client.login(admin_email, local_admin_password(admin_password))
        return client, admin_email
    return client, f"new customer {new_customer(client)}"


@app.command()
def up(
    var: Path = typer.Option(Path("var"), help="Where the SQLite databases and logs go."),
    port_offset: int = typer.Option(int(os.environ.get("CS_PORT_OFFSET", "0")),
                                    help="Added to every default port (8761, 8001-8007, 8080, NATS's 4222 and 8222)."),
) -> None:
    """Start the whole fleet as local processes (SQLite, local registry) until Ctrl-C."""
    raise typer.Exit(local_fleet(var.resolve(), port_offset).run_until_interrupted(log=typer.echo))


@app.command()
def seed(var: Path = typer.Option(Path("var"), help="Where the SQLite databases are.")) -> None:
    """Load the demo catalogue and carriers into the local databases."""
    local_fleet(var.resolve()).seed()
    typer.echo("Seeded the demo catalogue and carriers.")


@app.command()
def order(
    gateway: Gateway = DEFAULT_GATEWAY,
    sku: Skus = None,
    qty: Quantities = None,
    card: Annotated[str, typer.Option("--card", help="Payment token: tok_visa, tok_chargeDeclined, "
                                      "tok_processingError, tok_flaky, …")] = "tok_visa",
    country: Country = "DE",
    email: Email = None,
    password: Password = None,
    token: Token = None,
    as_admin: AsAdmin = False,
    admin_email: AdminEmail = DEMO_ADMIN_EMAIL,
    admin_password: AdminPassword = "",
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", help="Send it again to get the same order back, never a second one.")] = None,
    follow_it: Annotated[bool, typer.Option("--follow/--no-follow", help="Follow the saga to its end.")] = True,
    timeout: Annotated[float, typer.Option(help="Longest wait for the saga's end, in seconds.")] = 120,
    as_json: AsJson = False,
) -> None:
    """Place one order and follow its saga to the end, printing each step as it completes.

    Exits 0 when the order completed, 1 when it was compensated (or anything went wrong).
    """
    with reported_errors():
        client, who = customer_client(gateway, email, password, token, as_admin, admin_email, admin_password)
        with client:
            lines = choose_lines(sku or [], qty or [], client.products)
            accepted = client.place_order(order_body(lines, country, card), idempotency_key)
            saga_id = accepted["saga_id"]
            if not as_json:
                console.print(f"Order placed as {who}: {describe(lines)}, "
                              f"card {card}, to {country.upper()}")
                console.print(f"Saga [bold]{saga_id}[/bold] is {accepted['status']}")
            if not follow_it:
                if as_json:
                    _print_json(accepted)
                return
            narrator = EventNarrator()
            saga: dict[str, Any] = {}
            for event, latest in follow(client, saga_id, timeout):
                saga = latest
                said = narrator.line(event)
                if said and not as_json:
                    console.print(f"  {said[1]}", style=said[0])
    if as_json:
        _print_json(saga)
    elif saga.get("status") == "COMPLETED":
        console.print(f"Order {saga.get('order_id')} ships with {saga.get('carrier_code')}, "
                      f"tracking number {saga.get('tracking_number')}.")
    elif saga.get("failure_reason"):
        console.print(f"Why: {saga['failure_reason']}", style="red")
    raise typer.Exit(0 if saga.get("status") == "COMPLETED" else 1)


@app.command()
def load(
    orders: Annotated[int, typer.Option("--orders", "-n", min=1, help="How many orders to place.")] = 20,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Orders in flight at once.")] = 5,
    gateway: Gateway = DEFAULT_GATEWAY,
    sku: Skus = None,
    qty: Quantities = None,
    card: Annotated[list[str] | None, typer.Option(
        "--card", help="Payment token; repeat to mix them (used in turn). Default tok_visa.")] = None,
    country: Country = "DE",
    email: Email = None,
    password: Password = None,
    token: Token = None,
    as_admin: AsAdmin = False,
    admin_email: AdminEmail = DEMO_ADMIN_EMAIL,
    admin_password: AdminPassword = "",
    timeout: Annotated[float, typer.Option(help="Longest wait for one order's outcome, in seconds.")] = 120,
    as_json: AsJson = False,
) -> None:
    """Place N orders, C at a time, each followed to its outcome; then outcomes, throughput and latency percentiles.

    Latency is from sending an order to seeing its saga's outcome. Exits 1 when any order ended in an error
    (not a saga outcome: a refused request, a lost connection, a timeout).
    """
    cards = card or ["tok_visa"]
    with reported_errors():
        client, who = customer_client(gateway, email, password, token, as_admin, admin_email, admin_password)
        with client:
            lines = choose_lines(sku or [], qty or [], client.products, orders=orders)
        assert client.token is not None
        bodies = [order_body(lines, country, cards[i % len(cards)]) for i in range(orders)]
        plan = LoadPlan(gateway.rstrip("/"), client.token, bodies, concurrency, timeout_secs=timeout)
    if not as_json:
        console.print(f"Placing {orders} orders ({concurrency} at a time) as {who}: "
                      f"{describe(lines)}, cards {', '.join(cards)}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[outcomes]}"), console=console, disable=as_json)
    tally = dict.fromkeys(OUTCOMES, 0)

    def counted(result: OrderResult) -> None:
        tally[result.outcome] += 1
        progress.update(task, advance=1, outcomes="  ".join(f"{k.lower()} {v}" for k, v in tally.items() if v))

    with progress:
        task = progress.add_task("orders", total=orders, outcomes="")
        report = asyncio.run(run_load(plan, counted))
    if as_json:
        latencies = report.latencies()
        _print_json({
            "orders": orders, "concurrency": concurrency, "wall_secs": report.wall_secs,
            "throughput_per_sec": report.throughput, "outcomes": {k: report.counts[k] for k in OUTCOMES},
            "latency_secs": {f"p{p}": percentile(latencies, p) for p in (50, 95, 99)},
            "errors": report.errors()[:20],
        })
    else:
        console.print(views.load_summary(report))
        for message in sorted(set(report.errors()))[:10]:
            errors.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1 if report.counts[ERROR] else 0)


# `sagas` and `sagas list` are one command: the group's callback runs first, and lists only when no subcommand
# follows (`sagas show ID` shows; `sagas list` lists in the subcommand's own call).
@sagas_app.callback(invoke_without_command=True)
@sagas_app.command("list")
def list_sagas(
    ctx: typer.Context,
    status: SagaState = None,
    limit: SagaLimit = 20,
    since: Since = None,
    gateway: Gateway = DEFAULT_GATEWAY,
    admin_email: AdminEmail = DEMO_ADMIN_EMAIL,
    admin_password: AdminPassword = "",
    as_json: AsJson = False,
) -> None:
    """List sagas, newest first (as the admin: everyone's)."""
    if ctx.invoked_subcommand is not None:
        return
    if status is not None and status.upper() not in SAGA_STATES:
        raise typer.BadParameter(f"one of {', '.join(SAGA_STATES)}", param_hint="--status")
    moment = parse_since(since)
    with reported_errors(), admin_client(gateway, admin_email, admin_password) as client:
        page = client.sagas(status.upper() if status else None, limit, created_after=moment)
    if as_json:
        _print_json(page)
    else:
        console.print(views.saga_list(page, moment))


@sagas_app.command("show")
def show_saga(
    saga_id: Annotated[str, typer.Argument(help="The saga's id.")],
    events: Annotated[bool, typer.Option("--events", help="Also list every event of its history.")] = False,
    gateway: Gateway = DEFAULT_GATEWAY,
    admin_email: AdminEmail = DEMO_ADMIN_EMAIL,
    admin_password: AdminPassword = "",
    as_json: AsJson = False,
) -> None:
    """One saga: its facts and the timeline of its steps and compensations."""
    with reported_errors(), admin_client(gateway, admin_email, admin_password) as client:
        saga = client.saga(saga_id)
    if as_json:
        _print_json(saga)
        return
    console.print(views.saga_facts(saga))
    console.print(views.saga_timeline(saga))
    if events:
        console.print(views.saga_events(saga))


# -- events: the bus, as the operator sees it (customer_cli/event_bus.py) --------------------------

NatsUrl = Annotated[str, typer.Option("--nats-url", envvar="NATS_URL",
                                      help="The bus (default: the local fleet's, from var/).")]
NatsUser = Annotated[str, typer.Option("--nats-user", envvar="NATS_USER", help="Its user (with --nats-url).")]
NatsPassword = Annotated[str, typer.Option("--nats-password", envvar="NATS_PASSWORD",
                                           help="Its password (with --nats-url).")]
Var = Annotated[Path, typer.Option("--var", help="The local fleet's directory (its secrets, its databases).")]
PortOffset = Annotated[int, typer.Option("--port-offset", envvar="CS_PORT_OFFSET",
                                         help="The local fleet's port offset (as given to `up`).")]


def operator_bus(nats_url: str, nats_user: str, nats_password: str, var: Path, port_offset: int) -> BusConfig:
    """--nats-url (NATS_URL) with its user and password, else the local fleet's bus as its `operator` user (the
    password the local runner made in var/secrets.json)."""
    if nats_url:
        return BusConfig(nats_url, nats_user or OPERATOR_USER, nats_password, name="customer-service-cli")
    if local_secrets.read(var.resolve()) is None:
        raise event_bus.BusUnreachable(f"no local fleet in {var} (no {local_secrets.FILE_NAME}): give --nats-url, "
                                       "--nats-user and --nats-password for a bus elsewhere")
    return local_fleet(var.resolve(), port_offset).bus_config(OPERATOR_USER)


@contextmanager
def bus_errors() -> Iterator[None]:
    """An unreachable bus or a refusal ends the command with its reason, not a traceback."""
    try:
        yield
    except (event_bus.BusUnreachable, event_bus.NotReplayable, ValueError) as exc:
        errors.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    except (nats.errors.Error, TimeoutError) as exc:
        errors.print(f"[red]The bus answered: {escape(str(exc) or type(exc).__name__)}[/red]")
        raise typer.Exit(1) from None


def _flush_line(text: Any) -> None:
    console.print(text, soft_wrap=True, markup=False)
    console.file.flush()  # a pipe (grep, a test) sees each event as it comes


@events_app.command("tail")
def tail_events(
    event_type: Annotated[str | None, typer.Option(
        "--type", help="Only this type: order.confirmed (any version), order.confirmed.v1, or a family (shipment).")
    ] = None,
    order_id: Annotated[str | None, typer.Option("--order", help="Only the events about this order.")] = None,
    from_start: Annotated[bool, typer.Option(
        "--from-start", help="Replay the EVENTS stream from its first message, then follow.")] = False,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Stop after this many events.")] = None,
    duration: Annotated[float | None, typer.Option(
        "--duration", min=0, help="Stop after this many seconds.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One CloudEvent (JSON) a line.")] = False,
    nats_url: NatsUrl = "",
    nats_user: NatsUser = "",
    nats_password: NatsPassword = "",
    var: Var = Path("var"),
    port_offset: PortOffset = 0,
) -> None:
    """Follow the events on the bus as they are published (until Ctrl-C, --count or --duration)."""
    with bus_errors():
        subject = event_bus.subject_filter(event_type)
        config = operator_bus(nats_url, nats_user, nats_password, var, port_offset)
        plan = event_bus.TailPlan(subject, order_id, count, duration, from_start)

        def show(seen: event_bus.Seen) -> None:
            if as_json:
                typer.echo(seen.json())
                sys.stdout.flush()
            else:
                _flush_line(views.event_line(seen.line()))

        def subscribed() -> None:
            scope = f" of order {order_id}" if order_id else ""
            start = "from the stream's start" if from_start else "from now on"
            errors.print(f"Following {subject}{scope} on {config.url} as {config.user}, {start} (Ctrl-C to stop)")

        try:
            asyncio.run(event_bus.tail(config, plan, show, subscribed))
        except KeyboardInterrupt:
            pass


@events_app.command("dead-letters")
def dead_letters(
    replay: Annotated[list[int] | None, typer.Option(
        "--replay", help="Publish this dead letter's event again on its subject, then delete it (repeatable).")
    ] = None,
    consumer: Annotated[str | None, typer.Option(
        "--consumer", help="Only this consumer's (its NATS name, e.g. order_service_parcel).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many to list (oldest first).")] = 100,
    as_json: AsJson = False,
    nats_url: NatsUrl = "",
    nats_user: NatsUser = "",
    nats_password: NatsPassword = "",
    var: Var = Path("var"),
    port_offset: PortOffset = 0,
) -> None:
    """List the events no consumer could apply (stream DEADLETTERS), or replay some (--replay SEQ).

    A replayed event is the same CloudEvent (its id unchanged), so a consumer that had applied it changes nothing.
    """
    with bus_errors():
        config = operator_bus(nats_url, nats_user, nats_password, var, port_offset)
        if replay:
            async def replay_all(js: Any) -> list[event_bus.Replayed]:
                return [await event_bus.replay(js, sequence) for sequence in replay]

            for done in asyncio.run(event_bus.with_jetstream(config, replay_all)):
                event = done.letter.event
                assert event is not None
                if as_json:
                    typer.echo(json.dumps({"sequence": done.letter.sequence, "event_id": event.id,
                                           "type": event.type, "msg_id": done.msg_id,
                                           "stream_sequence": done.stream_sequence, "deleted": done.deleted}))
                else:
                    console.print(f"Replayed dead letter {done.letter.sequence}: {event.type} {event.id} on "
                                  f"{done.letter.subject} (EVENTS sequence {done.stream_sequence}); "
                                  + ("the dead letter is deleted." if done.deleted else
                                     "[red]the dead letter could not be deleted.[/red]"))
            return
        page = asyncio.run(event_bus.with_jetstream(
            config, lambda js: event_bus.dead_letters(js, consumer=consumer, limit=limit)))
    if as_json:
        _print_json({"total": page.total, "items": [letter.as_json() for letter in page.letters]})
    elif page.total == 0:
        console.print("No dead letters: every consumer applied every event it was given.")
    else:
        console.print(views.dead_letter_table(page))


@events_app.command("catalogue")
def catalogue(
    write: Annotated[Path | None, typer.Option(
        "--write", help="Put the table into this file, between its catalogue markers (README.md).")] = None,
) -> None:
    """Every event type of the bus as a markdown table (README's "Events on the bus")."""
    if write is None:
        typer.echo(event_bus.catalogue_markdown(), nl=False)
        return
    try:
        changed = event_bus.write_catalogue(write)
    except (OSError, ValueError) as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    typer.echo(f"{write}: the catalogue {'updated' if changed else 'was up to date'}.")


# -- check: the invariant checker is customer_cli.invariants -------------------------------------


def outbox_databases(given: list[str], gateway: str, var: Path, port_offset: int) -> dict[str, str]:
    """The databases whose outboxes `check` counts: --database PACKAGE=URL, else the local fleet's SQLite files when
    the gateway is the local fleet's (a fleet elsewhere has databases this machine may not reach)."""
    databases: dict[str, str] = {}
    for item in given:
        package, _, url = item.partition("=")
        if package not in COMPONENTS or not COMPONENTS[package].database or not url:
            raise typer.BadParameter(f"PACKAGE=DATABASE_URL, PACKAGE one of "
                                     f"{', '.join(p for p, c in COMPONENTS.items() if c.database)}",
                                     param_hint="--database")
        databases[package] = url
    if databases or local_secrets.read(var.resolve()) is None:
        return databases
    fleet = local_fleet(var.resolve(), port_offset)
    port = fleet.port("gateway")
    if gateway.rstrip("/") not in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        return {}
    found = {package: fleet.database_url(package) for package, component in COMPONENTS.items() if component.database}
    return {package: url for package, url in found.items() if Path(make_url(url).database or "").exists()}


@app.command()
def check(
    gateway: Gateway = DEFAULT_GATEWAY,
    admin_email: AdminEmail = DEMO_ADMIN_EMAIL,
    admin_password: AdminPassword = "",
    since: Since = None,
    sku: Annotated[list[str] | None, typer.Option(
        "--sku", help="Also check that this SKU's stock is conserved (repeat for more).")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Count a COMPENSATION_FAILED saga as a violation (by default it is only counted).")] = False,
    database: Annotated[list[str] | None, typer.Option(
        "--database", help="PACKAGE=DATABASE_URL: check that service's outbox is drained (repeat for each); "
        "default: the local fleet's databases, when --gateway is the local fleet's.")] = None,
    var: Var = Path("var"),
    port_offset: PortOffset = 0,
) -> None:
    """Check the fleet's invariants through the gateway (every saga finished, money moved once, stock conserved,
    every delivered parcel's order delivered) and its outboxes (every event on the bus).

    Exits 1 when an invariant is broken.
    """
    moment = parse_since(since)
    databases = outbox_databases(database or [], gateway, var, port_offset)
    with reported_errors(), admin_client(gateway, admin_email, admin_password) as client:
        assert client.token is not None
        report = invariants.check_invariants(client.base_url, client.token, skus=sku or [], since=moment,
                                             allow_compensation_failed=not strict, databases=databases)
    if not databases:
        report.notes.append("outboxes not checked: give --database PACKAGE=URL for each service")
    console.print(report.render(), style="green" if report.ok else "red")
    raise typer.Exit(0 if report.ok else 1)


if __name__ == "__main__":
    app()
