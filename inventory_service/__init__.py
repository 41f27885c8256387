"""inventory_service: the product catalogue, stock levels and per-order allocations."""
