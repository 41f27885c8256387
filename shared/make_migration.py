"""Autogenerate a service's next migration against a scratch SQLite database.

Usage: python -m shared.make_migration order_service "add lines"
"""

from __future__ import annotations

import sys
import tempfile
from importlib import import_module
from pathlib import Path

from alembic import command

from shared.migrations import alembic_config


def main(package: str, message: str) -> None:
    package_dir = Path(import_module(package).__file__ or "").parent
    with tempfile.TemporaryDirectory() as tmp:
        config = alembic_config(package_dir, f"sqlite+aiosqlite:///{tmp}/scratch.db")
        command.upgrade(config, "head")
        command.revision(config, message=message, autogenerate=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "change")
