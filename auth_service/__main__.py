"""`python -m auth_service` runs the service; `python -m auth_service create-signing-key` adds a signing key."""

import asyncio
import sys

from auth_service.settings import Settings
from shared.server import serve


def main(argv: list[str]) -> int:
    settings = Settings()
    if argv[:1] == ["create-signing-key"]:
        # The explicit admin command that production needs when JWT_PRIVATE_KEY_PEM is not used.
        from auth_service.keys import create_signing_key_command

        kid = asyncio.run(create_signing_key_command(settings))
        sys.stderr.write(f"created signing key {kid}\n")
        return 0
    if argv:
        sys.stderr.write("usage: python -m auth_service [create-signing-key]\n")
        return 2
    serve("auth_service.app:create_app", settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
