"""What the container tests share: the compose stack they run against (tests/compose.py)."""

from __future__ import annotations

import pytest

from tests.compose import ComposeStack


@pytest.fixture(scope="module")
def compose(stack: object) -> ComposeStack:
    if not isinstance(stack, ComposeStack):
        pytest.skip("needs GATEWAY_URL at a docker compose stack")
    return stack
