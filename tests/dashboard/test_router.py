"""The dashboard's routes in-process: pages, static files, headers, and what is refused."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dashboard.router import router, static_files
from shared.errors import install_error_handlers
from tests.fleet import ROOT


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    return TestClient(app)


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/"])
def test_the_list_page_is_html_with_a_strict_policy(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert 'data-page="sagas"' in response.text


def test_a_saga_page_carries_its_canonical_id(client: TestClient) -> None:
    saga_id = uuid.uuid4()
    response = client.get(f"/dashboard/sagas/{str(saga_id).upper()}")
    assert response.status_code == 200
    assert f'data-saga-id="{saga_id}"' in response.text


@pytest.mark.parametrize("saga_id", ["not-a-uuid", "<script>alert(1)</script>"])
def test_a_saga_page_for_no_saga_id_is_a_404(client: TestClient, saga_id: str) -> None:
    response = client.get(f"/dashboard/sagas/{saga_id}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


def test_every_file_the_pages_load_is_served(client: TestClient) -> None:
    for page in ("/dashboard", f"/dashboard/sagas/{uuid.uuid4()}"):
        html = client.get(page).text
        referenced = re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', html)
        assert referenced, page
        for path in referenced:
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/dashboard/static/common.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/dashboard/static/dashboard.css").headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("name", ["nope.js", "..%2Frouter.py", "__init__.py", "router.py"])
def test_only_the_static_files_are_served(client: TestClient, name: str) -> None:
    assert client.get(f"/dashboard/static/{name}").status_code == 404


def test_the_static_files_are_package_data() -> None:
    assert {"common.js", "sagas.js", "saga.js", "dashboard.css"} <= set(static_files())


@pytest.mark.integration
def test_the_fleets_gateway_serves_the_dashboard(gateway_url: str) -> None:
    """Once gateway/app.py mounts the router, it must come before the gateway's catch-all proxy route."""
    if "dashboard" not in (ROOT / "gateway" / "app.py").read_text():
        pytest.skip("gateway/app.py does not mount dashboard.router yet (the tests use their own gateway)")
    response = httpx.get(f"{gateway_url}/dashboard", timeout=10)
    assert response.status_code == 200, response.text
    assert 'data-page="sagas"' in response.text
