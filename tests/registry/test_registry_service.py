"""Unit tests of the in-memory registry (registry/service.py) with an injected clock."""

from __future__ import annotations

import pytest

from registry.service import (
    ActionType,
    InstanceInfo,
    InstanceNotFound,
    InstanceRegistry,
    InstanceStatus,
    RegisteredInstance,
    apps_hashcode,
)
from tests.clock import Clock

START = 1_700_000_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def registry(clock: Clock) -> InstanceRegistry:
    return InstanceRegistry(clock=clock)


def instance_info(
    app: str = "ORDER-SERVICE",
    port: int = 8002,
    *,
    status: InstanceStatus = InstanceStatus.UP,
    duration: int = 90,
    interval: int = 30,
    dirty: int = 0,
) -> InstanceInfo:
    return InstanceInfo(
        instance_id=f"127.0.0.1:{app.lower()}:{port}",
        app=app,
        host_name="127.0.0.1",
        ip_addr="127.0.0.1",
        status=status,
        port=port,
        duration_secs=duration,
        renewal_interval_secs=interval,
        vip_address=app.lower(),
        last_dirty_timestamp=dirty,
    )


def ids(instances: tuple[RegisteredInstance, ...] | list[RegisteredInstance]) -> list[str]:
    return [instance.instance_id for instance in instances]


def delta_actions(registry: InstanceRegistry) -> dict[str, ActionType]:
    return {
        instance.instance_id: instance.action_type
        for application in registry.delta().applications
        for instance in application.instances
    }


# ----- register, renew, cancel -----


def test_register_stores_app_upper_case_and_lists_it(registry: InstanceRegistry) -> None:
    registered = registry.register(instance_info(app="order-service"))

    assert registered.app == "ORDER-SERVICE"
    assert registered.action_type == ActionType.ADDED
    assert registered.registration_timestamp == int(START * 1000)
    assert registered.service_up_timestamp == int(START * 1000)
    view = registry.applications()
    assert [application.name for application in view.applications] == ["ORDER-SERVICE"]
    assert registry.application("order-service") is not None
    assert registry.instance("Order-Service", registered.instance_id).status == InstanceStatus.UP
    assert registry.find_instance(registered.instance_id).app == "ORDER-SERVICE"


def test_register_defaults_lease_duration_and_dirty_timestamp(clock: Clock) -> None:
    registry = InstanceRegistry(clock=clock, lease_duration_default=90)
    registered = registry.register(instance_info(duration=0, interval=0))

    assert registered.info.duration_secs == 90
    assert registered.info.renewal_interval_secs == 30
    assert registered.info.last_dirty_timestamp == int(START * 1000)


def test_renew_unknown_instance_is_not_found(registry: InstanceRegistry) -> None:
    with pytest.raises(InstanceNotFound):
        registry.renew("ORDER-SERVICE", "nope")


def test_renew_with_newer_dirty_timestamp_asks_for_registration(registry: InstanceRegistry) -> None:
    info = instance_info(dirty=1000)
    registry.register(info)

    registry.renew(info.app, info.instance_id, last_dirty_timestamp=1000)
    registry.renew(info.app, info.instance_id, last_dirty_timestamp=999)  # older: accepted
    with pytest.raises(InstanceNotFound):
        registry.renew(info.app, info.instance_id, last_dirty_timestamp=1001)


def test_renew_does_not_change_the_registry_version(registry: InstanceRegistry, clock: Clock) -> None:
    info = instance_info()
    registry.register(info)
    version = registry.versions_delta

    clock.advance(10)
    registry.renew(info.app, info.instance_id)

    assert registry.versions_delta == version
    assert registry.instance(info.app, info.instance_id).last_renewal_timestamp == int((START + 10) * 1000)


def test_cancel_removes_instance_and_empty_application(registry: InstanceRegistry) -> None:
    info = instance_info()
    registry.register(info)

    cancelled = registry.cancel("order-service", info.instance_id)

    assert cancelled.action_type == ActionType.DELETED
    assert registry.applications().applications == ()
    assert registry.application(info.app) is None
    with pytest.raises(InstanceNotFound):
        registry.cancel(info.app, info.instance_id)
    with pytest.raises(InstanceNotFound):
        registry.renew(info.app, info.instance_id)


def test_register_keeps_held_registration_when_it_is_newer(registry: InstanceRegistry) -> None:
    registry.register(instance_info(port=8002, dirty=2000))
    stale = InstanceInfo(
        instance_id="127.0.0.1:order-service:8002",
        app="ORDER-SERVICE",
        host_name="stale-host",
        ip_addr="10.0.0.9",
        last_dirty_timestamp=1000,
    )

    registry.register(stale)

    assert registry.instance("ORDER-SERVICE", stale.instance_id).info.host_name == "127.0.0.1"


# ----- lease expiry and eviction -----


def test_lease_expires_after_exactly_its_duration(registry: InstanceRegistry, clock: Clock) -> None:
    info = instance_info(duration=3, interval=1)
    registry.register(info)

    clock.advance(3)
    assert registry.evict_expired() == []  # not yet: expiry is strictly after the duration
    clock.advance(0.01)
    evicted = registry.evict_expired()

    assert ids(evicted) == [info.instance_id]
    assert evicted[0].eviction_timestamp == int(clock.now * 1000)
    assert registry.applications().applications == ()
    assert delta_actions(registry) == {info.instance_id: ActionType.DELETED}


def test_renewal_extends_the_lease(registry: InstanceRegistry, clock: Clock) -> None:
    info = instance_info(duration=3, interval=1)
    registry.register(info)

    for _ in range(5):
        clock.advance(2)
        registry.renew(info.app, info.instance_id)
        assert registry.evict_expired() == []

    clock.advance(3.5)
    assert ids(registry.evict_expired()) == [info.instance_id]


# ----- hashcode and versions -----


def test_apps_hashcode_counts_statuses_sorted() -> None:
    assert apps_hashcode([]) == ""
    assert apps_hashcode(["UP", "DOWN", "UP"]) == "DOWN_1_UP_2_"
    assert apps_hashcode(["UP", "OUT_OF_SERVICE", "STARTING"]) == "OUT_OF_SERVICE_1_STARTING_1_UP_1_"


def test_registry_hashcode_covers_every_app(registry: InstanceRegistry) -> None:
    assert registry.hashcode == ""
    assert registry.applications().apps_hashcode == ""
    registry.register(instance_info("ORDER-SERVICE", 8002))
    registry.register(instance_info("ORDER-SERVICE", 9002))
    registry.register(instance_info("PAYMENT-SERVICE", 8004, status=InstanceStatus.DOWN))

    assert registry.hashcode == "DOWN_1_UP_2_"
    assert registry.applications().apps_hashcode == "DOWN_1_UP_2_"
    assert registry.delta().apps_hashcode == "DOWN_1_UP_2_"


def test_versions_delta_increments_on_every_change(registry: InstanceRegistry, clock: Clock) -> None:
    info = instance_info(duration=1, interval=1)
    versions = [registry.versions_delta]
    registry.register(info)
    versions.append(registry.versions_delta)
    registry.override_status(info.app, info.instance_id, InstanceStatus.OUT_OF_SERVICE)
    versions.append(registry.versions_delta)
    registry.remove_status_override(info.app, info.instance_id, InstanceStatus.UP)
    versions.append(registry.versions_delta)
    registry.cancel(info.app, info.instance_id)
    versions.append(registry.versions_delta)
    registry.register(info)
    clock.advance(2)
    registry.evict_expired()
    versions.append(registry.versions_delta)

    assert versions == [0, 1, 2, 3, 4, 6]
    assert registry.applications().versions_delta == 6
    assert registry.delta().versions_delta == 6


# ----- delta -----


def test_delta_holds_latest_action_per_instance(registry: InstanceRegistry, clock: Clock) -> None:
    kept = instance_info("ORDER-SERVICE", 8002)
    modified = instance_info("ORDER-SERVICE", 9002)
    gone = instance_info("PAYMENT-SERVICE", 8004)
    for info in (kept, modified, gone):
        registry.register(info)
    registry.override_status(modified.app, modified.instance_id, InstanceStatus.OUT_OF_SERVICE)
    registry.cancel(gone.app, gone.instance_id)

    assert delta_actions(registry) == {
        kept.instance_id: ActionType.ADDED,
        modified.instance_id: ActionType.MODIFIED,
        gone.instance_id: ActionType.DELETED,
    }
    # The full registry has no DELETED instance, and the delta's hash is the full registry's.
    assert registry.delta().apps_hashcode == "OUT_OF_SERVICE_1_UP_1_"


def test_delta_shows_the_live_lease_of_a_registered_instance(registry: InstanceRegistry, clock: Clock) -> None:
    info = instance_info()
    registry.register(info)
    clock.advance(5)
    registry.renew(info.app, info.instance_id)

    (application,) = registry.delta().applications
    assert application.instances[0].last_renewal_timestamp == int((START + 5) * 1000)


def test_delta_forgets_changes_after_retention(clock: Clock) -> None:
    registry = InstanceRegistry(clock=clock, delta_retention_secs=180)
    old = instance_info("ORDER-SERVICE", 8002)
    registry.register(old)
    clock.advance(100)
    recent = instance_info("ORDER-SERVICE", 9002)
    registry.register(recent)

    clock.advance(81)  # old change is 181 s old, the recent one 81 s

    assert set(delta_actions(registry)) == {recent.instance_id}
    clock.advance(100)
    assert delta_actions(registry) == {}
    # The full registry still has both; only the delta forgot them.
    assert len(registry.applications().applications[0].instances) == 2


# ----- status overrides -----


def test_status_override_wins_over_registration_until_removed(registry: InstanceRegistry) -> None:
    info = instance_info()
    registry.register(info)

    overridden = registry.override_status(info.app, info.instance_id, InstanceStatus.OUT_OF_SERVICE)
    assert overridden.status == InstanceStatus.OUT_OF_SERVICE
    assert overridden.info.overridden_status == InstanceStatus.OUT_OF_SERVICE
    assert overridden.action_type == ActionType.MODIFIED

    # Re-registering as UP does not lift the operator's override...
    assert registry.register(info).status == InstanceStatus.OUT_OF_SERVICE
    # ...but an instance that says DOWN is believed.
    assert registry.register(instance_info(status=InstanceStatus.DOWN)).status == InstanceStatus.DOWN

    restored = registry.remove_status_override(info.app, info.instance_id, InstanceStatus.UP)
    assert restored.status == InstanceStatus.UP
    assert restored.info.overridden_status == InstanceStatus.UNKNOWN
    assert registry.register(info).status == InstanceStatus.UP


def test_removing_override_without_status_makes_the_instance_register_again(registry: InstanceRegistry) -> None:
    info = instance_info()
    registry.register(info)
    registry.override_status(info.app, info.instance_id, InstanceStatus.OUT_OF_SERVICE)

    assert registry.remove_status_override(info.app, info.instance_id).status == InstanceStatus.UNKNOWN
    with pytest.raises(InstanceNotFound):
        registry.renew(info.app, info.instance_id)
    assert registry.register(info).status == InstanceStatus.UP


def test_override_is_dropped_on_cancel(registry: InstanceRegistry) -> None:
    info = instance_info()
    registry.register(info)
    registry.override_status(info.app, info.instance_id, InstanceStatus.OUT_OF_SERVICE)
    registry.cancel(info.app, info.instance_id)

    assert registry.register(info).status == InstanceStatus.UP


def test_status_override_on_unknown_instance_is_not_found(registry: InstanceRegistry) -> None:
    with pytest.raises(InstanceNotFound):
        registry.override_status("ORDER-SERVICE", "nope", InstanceStatus.OUT_OF_SERVICE)
    with pytest.raises(InstanceNotFound):
        registry.remove_status_override("ORDER-SERVICE", "nope")


# ----- VIPs -----


def test_vip_lookup_matches_any_address_in_the_list(registry: InstanceRegistry) -> None:
    registry.register(instance_info("ORDER-SERVICE", 8002))
    registry.register(
        InstanceInfo(
            instance_id="b",
            app="BILLING",
            host_name="h",
            ip_addr="127.0.0.1",
            vip_address="billing, payments",
            secure_vip_address="secure-billing",
        )
    )

    assert [app.name for app in registry.by_vip("payments").applications] == ["BILLING"]
    assert registry.by_vip("payments").apps_hashcode == "UP_1_"
    assert [app.name for app in registry.by_vip("secure-billing", secure=True).applications] == ["BILLING"]
    assert registry.by_vip("nothing").applications == ()


# ----- self-preservation -----


def _register_heartbeating_fleet(registry: InstanceRegistry, clock: Clock, size: int) -> list[InstanceInfo]:
    fleet = [instance_info("ORDER-SERVICE", 8000 + n, duration=3, interval=1) for n in range(size)]
    for info in fleet:
        registry.register(info)
    for _ in range(60):
        clock.advance(1)
        for info in fleet:
            registry.renew(info.app, info.instance_id)
    return fleet


def test_without_self_preservation_mass_expiry_evicts_everyone(clock: Clock) -> None:
    registry = InstanceRegistry(clock=clock, self_preservation=False)
    fleet = _register_heartbeating_fleet(registry, clock, size=4)

    clock.advance(30)  # e.g. a network partition: nobody's heartbeat arrives

    assert registry.is_lease_expiration_enabled()
    assert len(registry.evict_expired()) == len(fleet)


def test_self_preservation_pauses_eviction_when_renewals_drop(clock: Clock) -> None:
    registry = InstanceRegistry(clock=clock, self_preservation=True, renewal_percent_threshold=0.85)
    fleet = _register_heartbeating_fleet(registry, clock, size=4)
    assert registry.is_lease_expiration_enabled()

    clock.advance(30)  # half a minute without heartbeats: 50 % of expected renewals

    assert not registry.is_lease_expiration_enabled()
    assert registry.evict_expired() == []
    assert len(registry.applications().applications[0].instances) == len(fleet)


def test_self_preservation_still_evicts_a_few_dead_instances(clock: Clock) -> None:
    registry = InstanceRegistry(clock=clock, self_preservation=True, renewal_percent_threshold=0.85)
    fleet = _register_heartbeating_fleet(registry, clock, size=10)
    dead, alive = fleet[0], fleet[1:]

    for _ in range(5):  # one instance out of ten stops: renewals stay at ~90 %
        clock.advance(1)
        for info in alive:
            registry.renew(info.app, info.instance_id)

    assert registry.is_lease_expiration_enabled()
    assert ids(registry.evict_expired()) == [dead.instance_id]
