"""The dashboard in a real headless Chromium, against the real fleet through the gateway."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import User, register_customer
from tests.dashboard.shop import Shop, clear_faults, inject_fault, place_order, wait_terminal
from tests.fleet import Fleet

pytestmark = pytest.mark.integration

STEPS = ["create_order", "add_order_lines", "allocate_inventory", "make_payment", "assign_carrier",
         "create_shipment", "confirm_order"]


def log_in(page: Any, user: User) -> None:
    page.goto("/dashboard")
    page.fill("#login-email", user.email)
    page.fill("#login-password", user.password)
    page.click("#login-form button[type=submit]")


def logged_in_as_admin(page: Any, admin: User, path: str = "/dashboard") -> None:
    log_in(page, admin)
    page.locator("#content").wait_for(state="visible")
    assert page.inner_text("#who") == admin.email
    if path != "/dashboard":
        page.goto(path)  # the token stays in sessionStorage for the tab
        page.locator("#content").wait_for(state="visible")


def test_a_customer_is_refused(page: Any, api: httpx.Client) -> None:
    customer = register_customer(api)
    log_in(page, customer)
    page.wait_for_function("() => document.getElementById('login-error').textContent.includes('not an admin')")
    assert page.locator("#content").is_hidden()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_wrong_password_is_refused(page: Any, admin: User) -> None:
    log_in(page, User(admin.email, "not the password", "", ""))
    page.wait_for_function("() => document.getElementById('login-error').textContent.length > 0")
    assert page.locator("#content").is_hidden()


def test_a_saga_appears_while_it_runs_and_its_timeline_fills_in(
    page: Any, admin: User, api: httpx.Client, fleet: Fleet, shop: Shop, screenshots: Path,
) -> None:
    logged_in_as_admin(page, admin)
    page.wait_for_function("() => /^[0-9]+$/.test(document.querySelector('[data-count-value=COMPLETED]').textContent)")
    completed_before = int(page.inner_text("[data-count-value=COMPLETED]"))

    # Two steps are held back for a while, so the saga is seen running before it completes.
    inject_fault(fleet, "carrier_service", r"^/api/carriers/assignments$", status=0, count=1, delay_ms=3000)
    inject_fault(fleet, "shipment_service", r"^/api/shipments$", status=0, count=1, delay_ms=3000)
    try:
        customer = register_customer(api)
        saga_id = place_order(api, customer, shop)
        row = page.locator(f"#sagas tbody tr[data-saga-id='{saga_id}']")
        row.wait_for(timeout=10_000)  # no reload: the list refreshes itself
        assert row.get_attribute("data-status") in {"STARTED", "RUNNING"}
        page.screenshot(path=str(screenshots / "01-list-saga-running.png"), full_page=True)

        row.locator("a").click()
        page.wait_for_url(re.compile(f"/dashboard/sagas/{saga_id}$"))
        page.locator("#timeline tbody tr[data-kind=step]").first.wait_for()
        page.wait_for_selector("#timeline tr[data-kind=step][data-status=RUNNING]", timeout=10_000)
        page.screenshot(path=str(screenshots / "02-saga-running.png"), full_page=True)

        page.wait_for_selector("body[data-status=COMPLETED]", timeout=30_000)
    finally:
        clear_faults(fleet, "carrier_service")
        clear_faults(fleet, "shipment_service")
    for step in STEPS:
        assert page.get_attribute(f"#timeline tr[data-kind=step][data-step={step}]", "data-status") == "SUCCEEDED"
    assert page.locator("#timeline tr[data-kind=compensation]").count() == 0
    assert page.locator("#retry").is_hidden()
    assert page.locator("#events tbody tr[data-type=SagaCompleted]").count() == 1
    page.screenshot(path=str(screenshots / "03-saga-completed.png"), full_page=True)

    page.click("text=← all sagas")
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-count-value=COMPLETED]').textContent) > {completed_before}")
    assert page.get_attribute(f"#sagas tbody tr[data-saga-id='{saga_id}']", "data-status") == "COMPLETED"


def test_a_declined_card_shows_the_compensations(
    page: Any, admin: User, api: httpx.Client, shop: Shop, screenshots: Path,
) -> None:
    customer = register_customer(api)
    saga_id = place_order(api, customer, shop, card="tok_chargeDeclined")
    assert wait_terminal(api, customer, saga_id)["status"] == "COMPENSATED"

    logged_in_as_admin(page, admin, f"/dashboard/sagas/{saga_id}")
    page.wait_for_selector("body[data-status=COMPENSATED]")
    payment = page.locator("#timeline tr[data-kind=step][data-step=make_payment]")
    assert payment.get_attribute("data-status") == "FAILED"
    assert "declined" in payment.inner_text().lower()
    undone = page.locator("#timeline tr[data-kind=compensation]")
    # Undone latest first; the payment was refused, so there is nothing of it to undo.
    assert [undone.nth(i).get_attribute("data-step") for i in range(undone.count())] == [
        "allocate_inventory", "add_order_lines", "create_order"]
    assert {undone.nth(i).get_attribute("data-status") for i in range(undone.count())} == {"SUCCEEDED"}
    assert "declined" in page.inner_text("#failure").lower()
    assert page.locator("#retry").is_hidden()
    page.screenshot(path=str(screenshots / "04-saga-compensated.png"), full_page=True)


def test_a_failed_compensation_is_retried_from_its_page(
    page: Any, admin: User, api: httpx.Client, fleet: Fleet, shop: Shop, screenshots: Path,
) -> None:
    # A refusal (409) of the inventory release is final: the saga gives up and waits for an operator.
    inject_fault(fleet, "inventory_service", r"/release$", status=409, count=1)
    try:
        customer = register_customer(api)
        saga_id = place_order(api, customer, shop, card="tok_chargeDeclined")
        assert wait_terminal(api, customer, saga_id)["status"] == "COMPENSATION_FAILED"
    finally:
        clear_faults(fleet, "inventory_service")

    logged_in_as_admin(page, admin, "/dashboard?status=COMPENSATION_FAILED")
    row = page.locator(f"#sagas tbody tr[data-saga-id='{saga_id}']")
    row.wait_for()
    statuses = page.locator("#sagas tbody tr").evaluate_all("rows => rows.map(r => r.dataset.status)")
    assert set(statuses) == {"COMPENSATION_FAILED"}
    assert int(page.inner_text("[data-count-value=COMPENSATION_FAILED]")) >= 1
    page.screenshot(path=str(screenshots / "05-list-compensation-failed.png"), full_page=True)

    row.locator("a").click()
    page.wait_for_selector("body[data-status=COMPENSATION_FAILED]")
    failed = page.locator("#timeline tr[data-kind=compensation][data-step=allocate_inventory]")
    assert failed.get_attribute("data-status") == "FAILED"
    assert "409" in failed.inner_text()
    page.screenshot(path=str(screenshots / "06-saga-compensation-failed.png"), full_page=True)

    page.click("#retry")
    page.wait_for_selector("body[data-status=COMPENSATED]", timeout=30_000)
    assert page.locator("#retry").is_hidden()
    undone = page.locator("#timeline tr[data-kind=compensation]")
    assert {undone.nth(i).get_attribute("data-status") for i in range(undone.count())} == {"SUCCEEDED"}
    assert page.locator("#events tbody tr[data-type=CompensationRetried]").count() == 1
    page.screenshot(path=str(screenshots / "07-saga-retried.png"), full_page=True)


# A datetime-local input's value for an instant (the browser's own timezone), whole seconds.
LOCAL_INPUT = """([iso, deltaMs]) => {
  const d = new Date(Math.floor((new Date(iso).getTime() + deltaMs) / 1000) * 1000);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
}"""


def test_the_filters_narrow_the_list(page: Any, admin: User, api: httpx.Client, shop: Shop) -> None:
    customer = register_customer(api)
    declined = place_order(api, customer, shop, card="tok_chargeDeclined")
    created_at = wait_terminal(api, customer, declined)["created_at"]
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))

    logged_in_as_admin(page, admin)
    page.locator(f"#sagas tbody tr[data-saga-id='{declined}']").wait_for()
    # The counts are one request to /stats, not one page per state.
    assert any("/api/customer-orders/stats" in url for url in requests)
    assert not any("limit=1" in url for url in requests)
    page.select_option("#filter-status", "COMPLETED")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#sagas tbody tr')].every(r => r.dataset.status === 'COMPLETED')")
    assert page.locator(f"#sagas tbody tr[data-saga-id='{declined}']").count() == 0
    assert "status=COMPLETED" in page.url

    page.select_option("#filter-status", "")
    page.select_option("#filter-window", "300")
    page.wait_for_function("() => document.getElementById('counts-note').textContent.includes('window')")
    page.locator(f"#sagas tbody tr[data-saga-id='{declined}']").wait_for()
    # The window is the saga API's to apply, to the counts and to the list.
    assert any("/stats?created_after=" in url for url in requests)
    assert any(re.search(r"/api/customer-orders\?.*created_after=", url) for url in requests)

    # A window of the second the saga began (and the next) holds only this saga: counts and list say so.
    page.select_option("#filter-window", "range")
    page.fill("#filter-from", page.evaluate(LOCAL_INPUT, [created_at, 0]))
    page.fill("#filter-to", page.evaluate(LOCAL_INPUT, [created_at, 2000]))
    page.dispatch_event("#filter-to", "change")
    page.wait_for_function("() => document.querySelector('[data-count-value=\"\"]').textContent === '1'")
    assert page.inner_text("[data-count-value=COMPENSATED]") == "1"
    rows = page.locator("#sagas tbody tr").evaluate_all("rows => rows.map(r => r.dataset.sagaId)")
    assert rows == [declined]
    assert "window=range" in page.url and "from=" in page.url

    # A window that ended before this saga began hides it.
    page.fill("#filter-from", "")
    page.fill("#filter-to", "2000-01-01T00:00:00")
    page.dispatch_event("#filter-to", "change")
    page.wait_for_function("() => document.querySelectorAll('#sagas tbody tr').length === 0")
    assert "No saga matches" in page.inner_text("#list-note")
    assert page.inner_text("[data-count-value=\"\"]") == "0"


# --- live from the bus ------------------------------------------------------------------------------------------

LIST_READ = re.compile(r"/api/customer-orders\?")


def test_the_list_follows_the_bus_without_polling(
    page: Any, admin: User, api: httpx.Client, fleet: Fleet, shop: Shop, screenshots: Path,
) -> None:
    """A saga placed through the gateway appears and reaches COMPLETED on the open page through its EventSource:
    the list is read once (when the stream said it was live), never on a timer, and the saga itself at most
    twice (a new row; again if it moved while being read) while nine of its events come."""
    requests: list[tuple[str, str]] = []
    page.on("request", lambda request: requests.append((request.resource_type, request.url)))
    logged_in_as_admin(page, admin)
    page.wait_for_selector("#live[data-state=live]")
    page.wait_for_function("() => /^[0-9]+$/.test(document.querySelector('[data-count-value=COMPLETED]').textContent)")
    completed_before = int(page.inner_text("[data-count-value=COMPLETED]"))

    # The carrier's step is held back a while: the saga is on the page, in flight, long before it completes.
    inject_fault(fleet, "carrier_service", r"^/api/carriers/assignments$", status=0, count=1, delay_ms=2000)
    try:
        customer = register_customer(api)
        saga_id = place_order(api, customer, shop)
        row = page.locator(f"#sagas tbody tr[data-saga-id='{saga_id}']")
        row.wait_for(timeout=10_000)
        assert row.get_attribute("data-status") in {"STARTED", "RUNNING"}
        page.wait_for_selector(f"#sagas tbody tr[data-saga-id='{saga_id}'][data-status=COMPLETED]", timeout=30_000)
    finally:
        clear_faults(fleet, "carrier_service")
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-count-value=COMPLETED]').textContent) > {completed_before}")
    page.screenshot(path=str(screenshots / "08-list-live.png"), full_page=True)

    streams = [url for kind, url in requests if kind == "eventsource"]
    assert len(streams) == 1 and "/dashboard/api/events/stream" in streams[0]
    assert len([url for _, url in requests if LIST_READ.search(url)]) == 1
    saga_reads = [url for _, url in requests if url.endswith(f"/api/customer-orders/{saga_id}")]
    assert 1 <= len(saga_reads) <= 2
    # started, seven steps succeeded, completed: each came as an event of the stream.
    assert int(page.get_attribute("#live", "data-events") or 0) >= 9
    assert page.inner_text("#live").startswith("live")


def test_the_page_says_when_the_bus_is_away_and_goes_live_again(page: Any, admin: User, fleet: Fleet) -> None:
    assert fleet.nats is not None, "the tests' fleet runs a nats-server of its own"
    logged_in_as_admin(page, admin)
    page.wait_for_selector("#live[data-state=live]")
    fleet.nats.stop()
    try:
        page.wait_for_selector("#live[data-state=down]", timeout=15_000)
        assert page.inner_text("#live").startswith("not live")
    finally:
        fleet.nats.start()
        fleet.nats.wait_ready()
    page.wait_for_selector("#live[data-state=live]", timeout=30_000)
