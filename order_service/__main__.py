"""`python -m order_service` runs the service with uvicorn."""

from order_service.settings import Settings
from shared.server import serve

if __name__ == "__main__":
    serve("order_service.app:create_app", Settings())
