"""`customer-service` CLI (typer): run the local fleet, seed it."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from customer_cli.runner import LocalFleet

app = typer.Typer(help="customer-service: the order-to-shipment fleet.", no_args_is_help=True)
ROOT = Path(__file__).resolve().parent.parent


@app.command()
def up(
    var: Path = typer.Option(Path("var"), help="Where the SQLite databases and logs go."),
    port_offset: int = typer.Option(int(os.environ.get("CS_PORT_OFFSET", "0")),
                                    help="Added to every default port (8761, 8001-8007, 8080)."),
) -> None:
    """Start the whole fleet as local processes (SQLite, local registry) until Ctrl-C."""
    fleet = LocalFleet(ROOT, var.resolve(), port_offset, log=typer.echo)
    raise typer.Exit(fleet.run_until_interrupted())


@app.command()
def seed(var: Path = typer.Option(Path("var"), help="Where the SQLite databases are.")) -> None:
    """Load the demo catalogue and carriers into the local databases."""
    fleet = LocalFleet(ROOT, var.resolve(), log=typer.echo)
    (fleet.var / "logs").mkdir(parents=True, exist_ok=True)
    fleet.seed()
    typer.echo("Seeded the demo catalogue and carriers.")


if __name__ == "__main__":
    app()
