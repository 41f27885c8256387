"""`python -m inventory_service` runs the service with uvicorn."""

from inventory_service.settings import Settings
from shared.server import serve

if __name__ == "__main__":
    serve("inventory_service.app:create_app", Settings())
