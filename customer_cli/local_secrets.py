"""The local fleet's secrets: generated at its first run, kept in var/secrets.json (owner-only), reused after.

No secret of the local fleet is printed in the repository: the services' client secret, the gateway's own,
the registry's password, the demo admin's password and every NATS user's password are random per checkout. The
environment's values win when set. A secret a file of an earlier version lacks is made and added to it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from customer_cli.nats import NATS_USERS, generate_passwords

FILE_NAME = "secrets.json"


@dataclass(frozen=True)
class LocalSecrets:
    service_client_secret: str
    registry_password: str
    admin_password: str
    gateway_client_secret: str
    nats_passwords: dict[str, str]  # NATS user -> its password (customer_cli/nats.py)


def _generate() -> LocalSecrets:
    # Hex only: py-eureka-client reads the registry's password out of its URL with a narrow pattern.
    return LocalSecrets(service_client_secret=secrets.token_hex(24), registry_password=secrets.token_hex(16),
                        admin_password=secrets.token_hex(8), gateway_client_secret=secrets.token_hex(24),
                        nats_passwords=generate_passwords())


def read(var: Path) -> LocalSecrets | None:
    """The secrets the local runner made in `var`, or None before its first run. A secret the file lacks (it was
    written before that secret existed) is made now and written back; the others are kept."""
    path = var / FILE_NAME
    try:
        values = json.loads(path.read_text())
        made = asdict(_generate())
        texts = [name for name in LocalSecrets.__dataclass_fields__ if name != "nats_passwords"]
        kept_nats = values.get("nats_passwords", {})
        missing = [name for name in texts if name not in values] + [u for u in NATS_USERS if u not in kept_nats]
        found = LocalSecrets(**{name: str(values.get(name, made[name])) for name in texts},
                             nats_passwords={u: str(kept_nats.get(u, made["nats_passwords"][u])) for u in NATS_USERS})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if missing:
        path.write_text(json.dumps(asdict(found), indent=2))
    return found


def load_or_create(var: Path) -> LocalSecrets:
    """The secrets in `var`, made now (file mode 0600) if there are none yet."""
    existing = read(var)
    if existing is not None:
        return existing
    var.mkdir(parents=True, exist_ok=True)
    made = _generate()
    path = var / FILE_NAME
    # O_EXCL: two runners starting at once must not write two different sets; the loser reads the winner's.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read(var) or made
    with os.fdopen(fd, "w") as file:
        json.dump(asdict(made), file, indent=2)
    return made
