"""The dashboard's routes in-process: pages, static files, headers, and what is refused."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from dashboard.router import router, static_files
from shared.errors import install_error_handlers


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard.test") as client:
        yield client


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/"])
async def test_the_list_page_is_html_with_a_strict_policy(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert 'data-page="sagas"' in response.text


async def test_a_saga_page_carries_its_canonical_id(client: httpx.AsyncClient) -> None:
    saga_id = uuid.uuid4()
    response = await client.get(f"/dashboard/sagas/{str(saga_id).upper()}")
    assert response.status_code == 200
    assert f'data-saga-id="{saga_id}"' in response.text


@pytest.mark.parametrize("saga_id", ["not-a-uuid", "<script>alert(1)</script>"])
async def test_a_saga_page_for_no_saga_id_is_a_404(client: httpx.AsyncClient, saga_id: str) -> None:
    response = await client.get(f"/dashboard/sagas/{saga_id}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_every_file_the_pages_load_is_served(client: httpx.AsyncClient) -> None:
    for page in ("/dashboard", f"/dashboard/sagas/{uuid.uuid4()}"):
        html = (await client.get(page)).text
        referenced = re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', html)
        assert referenced, page
        for path in referenced:
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.headers["x-content-type-options"] == "nosniff"
    assert (await client.get("/dashboard/static/common.js")).headers["content-type"].startswith("text/javascript")
    assert (await client.get("/dashboard/static/dashboard.css")).headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("name", ["nope.js", "..%2Frouter.py", "__init__.py", "router.py"])
async def test_only_the_static_files_are_served(client: httpx.AsyncClient, name: str) -> None:
    assert (await client.get(f"/dashboard/static/{name}")).status_code == 404


def test_the_static_files_are_package_data() -> None:
    assert {"common.js", "sagas.js", "saga.js", "dashboard.css"} <= set(static_files())


@pytest.mark.integration
def test_the_fleets_gateway_serves_the_dashboard(gateway_url: str) -> None:
    """The gateway mounts the router before its catch-all proxy route."""
    response = httpx.get(f"{gateway_url}/dashboard", timeout=10)
    assert response.status_code == 200, response.text
    assert 'data-page="sagas"' in response.text
