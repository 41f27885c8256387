"""Run the registry: `python -m registry` (HOST, PORT and the other RegistrySettings from the env)."""

from __future__ import annotations

from registry.app import create_app
from registry.settings import RegistrySettings
from shared.logging import configure_logging
from shared.server import serve


def main() -> None:
    settings = RegistrySettings()
    configure_logging("registry", level=settings.log_level, json=settings.log_json)
    serve(create_app(settings), settings, factory=False)


if __name__ == "__main__":
    main()
