"""`python -m gateway` runs the gateway with uvicorn."""

from gateway.settings import Settings
from shared.server import serve

if __name__ == "__main__":
    serve("gateway.app:create_app", Settings())
