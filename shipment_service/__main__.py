"""`python -m shipment_service` runs the service with uvicorn."""

from shared.server import serve
from shipment_service.settings import Settings

if __name__ == "__main__":
    serve("shipment_service.app:create_app", Settings())
