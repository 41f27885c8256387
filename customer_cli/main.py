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

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from customer_cli import invariants, local_secrets, views
from customer_cli.fleet import DEMO_ADMIN_EMAIL, local_fleet
from customer_cli.gateway_client import GatewayClient, GatewayError
from customer_cli.load import ERROR, OUTCOMES, LoadPlan, OrderResult, percentile, run_load
from customer_cli.orders import EventNarrator, choose_lines, describe, follow, new_customer, order_body

app = typer.Typer(help="customer-service: the order-to-shipment fleet.", no_args_is_help=True)
sagas_app = typer.Typer(help="List sagas (admin), or show one with its steps: `sagas show ID`.")
app.add_typer(sagas_app, name="sagas")
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


# -- check: the invariant checker is customer_cli.invariants -------------------------------------

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
) -> None:
    """Check the fleet's invariants through the gateway (every saga finished, money moved once, stock conserved).

    Exits 1 when an invariant is broken.
    """
    moment = parse_since(since)
    with reported_errors(), admin_client(gateway, admin_email, admin_password) as client:
        assert client.token is not None
        report = invariants.check_invariants(client.base_url, client.token, skus=sku or [], since=moment,
                                             allow_compensation_failed=not strict)
    console.print(report.render(), style="green" if report.ok else "red")
    raise typer.Exit(0 if report.ok else 1)


if __name__ == "__main__":
    app()
