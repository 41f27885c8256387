"""order_service: customer orders and their priced lines."""
