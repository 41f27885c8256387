"""Run the registry: `python -m registry` (HOST, PORT and the other RegistrySettings from the env)."""

from __future__ import annotations

import uvicorn

from registry.app import create_app
from registry.settings import RegistrySettings
from shared.logging import configure_logging


def main() -> None:
    settings = RegistrySettings()
    configure_logging("registry", level=settings.log_level, json=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


if __name__ == "__main__":
    main()
