"""`python -m carrier_service` runs the service with uvicorn."""

from carrier_service.settings import Settings
from shared.server import serve

if __name__ == "__main__":
    serve("carrier_service.app:create_app", Settings())
