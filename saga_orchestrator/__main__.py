"""`python -m saga_orchestrator` runs the service with uvicorn."""

from saga_orchestrator.settings import Settings
from shared.server import serve

if __name__ == "__main__":
    serve("saga_orchestrator.app:create_app", Settings())
