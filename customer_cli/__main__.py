"""`python -m customer_cli` is the `customer-service` command."""

from customer_cli.main import app

app()
