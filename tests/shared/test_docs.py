"""The docs pages every service serves (shared/docs.py) work offline: their assets come from the service itself."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from carrier_service.app import create_app
from carrier_service.settings import Settings
from tests.inprocess import fresh_database_url, running_app
from tests.shared.docs_pages import assert_page_loads_locally

DB_NAME = "cs_unit_shared_docs"


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=fresh_database_url(DB_NAME), eureka_server_url="")
    async with running_app(create_app, settings) as (_, client):
        yield client


async def test_swagger_ui_loads_its_script_and_stylesheet_from_the_service(client: httpx.AsyncClient) -> None:
    assets = await assert_page_loads_locally(client, "/docs")
    assert sorted(assets.values()) == ["icon", "script", "stylesheet"]
    page = (await client.get("/docs")).text
    assert "url: '/openapi.json'" in page
    document = await client.get("/openapi.json")
    assert document.status_code == 200 and "/api/carriers" in str(document.json()["paths"])


async def test_redoc_loads_its_script_from_the_service(client: httpx.AsyncClient) -> None:
    assets = await assert_page_loads_locally(client, "/redoc")
    assert "script" in assets.values()


async def test_oauth2_redirect_page_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs/oauth2-redirect")
    assert response.status_code == 200 and "swaggerUIRedirectOauth2" in response.text


async def test_unknown_asset_is_a_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs/assets/nope.js")).status_code == 404
    assert (await client.get("/docs/assets/../app.py")).status_code == 404
