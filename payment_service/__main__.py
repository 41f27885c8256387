"""`python -m payment_service` runs the service with uvicorn."""

from payment_service.settings import Settings
from shared.server import serve

if __name__ == "__main__":
    serve("payment_service.app:create_app", Settings())
