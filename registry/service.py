"""The in-memory instance registry: leases, status overrides, eviction, the delta queue and the hashcode.

It follows the Netflix Eureka server's semantics as py-eureka-client sees them (see
EUREKA-PROTOCOL.md) and knows no HTTP. All methods are meant to be called from one event loop
thread, so there is no locking.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import structlog

log = structlog.get_logger("registry")

DEFAULT_DATA_CENTER_CLASS = "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"
DEFAULT_RENEWAL_INTERVAL_SECS = 30
SELF_PRESERVATION_WINDOW_SECS = 60.0


class InstanceStatus(StrEnum):
    UP = "UP"
    DOWN = "DOWN"
    STARTING = "STARTING"
    OUT_OF_SERVICE = "OUT_OF_SERVICE"
    UNKNOWN = "UNKNOWN"


class ActionType(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


class InstanceNotFound(LookupError):
    """No lease for this app and instance id (or the instance must register again)."""


@dataclass(frozen=True)
class InstanceInfo:
    """What an instance says about itself when it registers (the `instance` object of the POST body)."""

    instance_id: str
    app: str
    host_name: str
    ip_addr: str
    status: InstanceStatus = InstanceStatus.UP
    overridden_status: InstanceStatus = InstanceStatus.UNKNOWN
    port: int = 7001
    port_enabled: bool = True
    secure_port: int = 7002
    secure_port_enabled: bool = False
    country_id: int = 1
    data_center_class: str = DEFAULT_DATA_CENTER_CLASS
    data_center_name: str = "MyOwn"
    data_center_metadata: Mapping[str, str] = field(default_factory=dict)
    renewal_interval_secs: int = DEFAULT_RENEWAL_INTERVAL_SECS
    duration_secs: int = 90
    metadata: Mapping[str, str] = field(default_factory=dict)
    home_page_url: str = ""
    status_page_url: str = ""
    health_check_url: str = ""
    secure_health_check_url: str = ""
    vip_address: str = ""
    secure_vip_address: str = ""
    app_group_name: str = ""
    asg_name: str = ""
    is_coordinating_discovery_server: bool = False
    last_dirty_timestamp: int = 0


@dataclass(frozen=True)
class RegisteredInstance:
    """An instance as the registry publishes it: what it registered plus its lease and bookkeeping.

    `info.status` and `info.overridden_status` are the effective values after status overrides.
    Timestamps are epoch milliseconds, as on the wire.
    """

    info: InstanceInfo
    registration_timestamp: int
    last_renewal_timestamp: int
    eviction_timestamp: int
    service_up_timestamp: int
    last_updated_timestamp: int
    action_type: ActionType

    @property
    def app(self) -> str:
        return self.info.app

    @property
    def instance_id(self) -> str:
        return self.info.instance_id

    @property
    def status(self) -> InstanceStatus:
        return self.info.status


@dataclass(frozen=True)
class ApplicationView:
    name: str
    instances: tuple[RegisteredInstance, ...]


@dataclass(frozen=True)
class RegistryView:
    """A full registry, a delta or a VIP query: what `<applications>` renders."""

    versions_delta: int
    apps_hashcode: str
    applications: tuple[ApplicationView, ...]


@dataclass
class _Lease:
    info: InstanceInfo
    registration_ms: int
    last_renewal_ms: int
    service_up_ms: int = 0
    eviction_ms: int = 0
    last_updated_ms: int = 0
    action_type: ActionType = ActionType.ADDED

    def snapshot(self) -> RegisteredInstance:
        return RegisteredInstance(
            info=self.info,
            registration_timestamp=self.registration_ms,
            last_renewal_timestamp=self.last_renewal_ms,
            eviction_timestamp=self.eviction_ms,
            service_up_timestamp=self.service_up_ms,
            last_updated_timestamp=self.last_updated_ms,
            action_type=self.action_type,
        )

    def is_expired(self, now_ms: int) -> bool:
        # Expire after exactly durationInSecs without a renewal. The real server effectively waits
        # 2x duration because renew() pre-adds the duration (a documented, unfixed bug); we don't.
        return now_ms > self.last_renewal_ms + self.info.duration_secs * 1000


@dataclass(frozen=True)
class _Change:
    at: float
    instance: RegisteredInstance


def apps_hashcode(statuses: Iterable[str]) -> str:
    """Eureka's reconcile hashcode: `{STATUS}_{count}_` per status present, sorted by status."""
    counts = collections.Counter(statuses)
    return "".join(f"{status}_{counts[status]}_" for status in sorted(counts))


class InstanceRegistry:
    """Registered instances by app (upper case) and instance id, with their leases."""

    def __init__(
        self,
        *,
        lease_duration_default: int = 90,
        delta_retention_secs: float = 180.0,
        self_preservation: bool = False,
        renewal_percent_threshold: float = 0.85,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lease_duration_default = lease_duration_default
        self._delta_retention_secs = delta_retention_secs
        self.self_preservation = self_preservation
        self._renewal_percent_threshold = renewal_percent_threshold
        self._clock = clock
        self._apps: dict[str, dict[str, _Lease]] = {}
        # Survives re-registration, as in the real server; dropped on cancel and eviction.
        self._overrides: dict[str, InstanceStatus] = {}
        self._recent_changes: collections.deque[_Change] = collections.deque()
        self._renewals: collections.deque[float] = collections.deque()
        self._version = 0

    # ----- clock -----
    def _now(self) -> float:
        return self._clock()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # ----- changes -----
    @property
    def versions_delta(self) -> int:
        return self._version

    def _record_change(self, lease: _Lease, action: ActionType) -> None:
        lease.action_type = action
        lease.last_updated_ms = self._now_ms()
        self._version += 1
        self._recent_changes.append(_Change(at=self._now(), instance=lease.snapshot()))
        self._prune_recent_changes()

    def _prune_recent_changes(self) -> None:
        horizon = self._now() - self._delta_retention_secs
        while self._recent_changes and self._recent_changes[0].at < horizon:
            self._recent_changes.popleft()

    def _find_lease(self, app: str, instance_id: str) -> _Lease:
        lease = self._apps.get(app.upper(), {}).get(instance_id)
        if lease is None:
            raise InstanceNotFound(f"{app.upper()}/{instance_id}")
        return lease

    # ----- the protocol's operations -----
    def register(self, info: InstanceInfo) -> RegisteredInstance:
        """Add or replace an instance's registration and start a new lease (always ADDED)."""
        now_ms = self._now_ms()
        info = dataclasses.replace(
            info,
            app=info.app.upper(),
            duration_secs=info.duration_secs if info.duration_secs > 0 else self._lease_duration_default,
            renewal_interval_secs=info.renewal_interval_secs
            if info.renewal_interval_secs > 0
            else DEFAULT_RENEWAL_INTERVAL_SECS,
            # Like the real server's InstanceInfo, an unset dirty timestamp means "now".
            last_dirty_timestamp=info.last_dirty_timestamp if info.last_dirty_timestamp > 0 else now_ms,
        )
        leases = self._apps.setdefault(info.app, {})
        existing = leases.get(info.instance_id)
        if existing is not None and existing.info.last_dirty_timestamp > info.last_dirty_timestamp:
            # The real server keeps the registration it has when that one is newer.
            log.info(
                "registration older than the one held, keeping the held one",
                app=info.app,
                instance_id=info.instance_id,
            )
            info = existing.info

        if info.overridden_status != InstanceStatus.UNKNOWN and info.instance_id not in self._overrides:
            self._overrides[info.instance_id] = info.overridden_status
        override = self._overrides.get(info.instance_id, InstanceStatus.UNKNOWN)
        info = dataclasses.replace(
            info, overridden_status=override, status=self._status_on_register(info.status, override)
        )

        lease = _Lease(
            info=info,
            registration_ms=now_ms,
            last_renewal_ms=now_ms,
            service_up_ms=existing.service_up_ms if existing is not None else 0,
        )
        if info.status == InstanceStatus.UP and lease.service_up_ms == 0:
            lease.service_up_ms = now_ms
        leases[info.instance_id] = lease
        self._record_change(lease, ActionType.ADDED)
        log.info(
            "registered",
            app=info.app,
            instance_id=info.instance_id,
            status=info.status.value,
            lease_secs=info.duration_secs,
            replaced=existing is not None,
        )
        return lease.snapshot()

    @staticmethod
    def _status_on_register(status: InstanceStatus, override: InstanceStatus) -> InstanceStatus:
        # The real server's rule order: an instance that says DOWN or STARTING is believed;
        # otherwise an operator's override wins; otherwise the instance's own status.
        if status in (InstanceStatus.DOWN, InstanceStatus.STARTING):
            return status
        if override != InstanceStatus.UNKNOWN:
            return override
        return status

    def renew(self, app: str, instance_id: str, last_dirty_timestamp: int | None = None) -> None:
        """Heartbeat. Raises InstanceNotFound when the instance must (re-)register.

        That is when there is no lease, when its status is UNKNOWN (after an override was deleted),
        or when the heartbeat carries a lastDirtyTimestamp newer than the registration held.
        The heartbeat's own `status` parameter is ignored, as by the real server: a status
        change reaches the registry by registering again or through an override.
        """
        lease = self._find_lease(app, instance_id)
        if lease.info.status == InstanceStatus.UNKNOWN:
            raise InstanceNotFound(f"{app.upper()}/{instance_id} has status UNKNOWN: register again")
        lease.last_renewal_ms = self._now_ms()
        self._renewals.append(self._now())
        self._prune_renewals()
        if last_dirty_timestamp is not None and last_dirty_timestamp > lease.info.last_dirty_timestamp:
            raise InstanceNotFound(f"{app.upper()}/{instance_id} is newer at the client: register again")

    def cancel(self, app: str, instance_id: str) -> RegisteredInstance:
        """Deregister an instance; it appears in the delta as DELETED."""
        removed = self._remove(app, instance_id)
        log.info("cancelled", app=removed.app, instance_id=instance_id)
        return removed

    def _remove(self, app: str, instance_id: str, *, evicted: bool = False) -> RegisteredInstance:
        lease = self._find_lease(app, instance_id)
        leases = self._apps[app.upper()]
        del leases[instance_id]
        if not leases:
            del self._apps[app.upper()]
        self._overrides.pop(instance_id, None)
        if evicted:
            lease.eviction_ms = self._now_ms()
        self._record_change(lease, ActionType.DELETED)
        return lease.snapshot()

    def override_status(
        self,
        app: str,
        instance_id: str,
        status: InstanceStatus,
        last_dirty_timestamp: int | None = None,
    ) -> RegisteredInstance:
        """An operator's status override (e.g. OUT_OF_SERVICE); it outlives re-registration."""
        lease = self._find_lease(app, instance_id)
        self._overrides[instance_id] = status
        self._set_status(lease, status, overridden=status, last_dirty_timestamp=last_dirty_timestamp)
        log.info("status overridden", app=lease.info.app, instance_id=instance_id, status=status.value)
        return lease.snapshot()

    def remove_status_override(
        self,
        app: str,
        instance_id: str,
        status: InstanceStatus | None = None,
        last_dirty_timestamp: int | None = None,
    ) -> RegisteredInstance:
        """Drop the override. Without a new status the instance becomes UNKNOWN, so its next
        heartbeat answers 404 and the client registers again with its own status (real server)."""
        lease = self._find_lease(app, instance_id)
        self._overrides.pop(instance_id, None)
        self._set_status(
            lease,
            status or InstanceStatus.UNKNOWN,
            overridden=InstanceStatus.UNKNOWN,
            last_dirty_timestamp=last_dirty_timestamp,
        )
        log.info("status override removed", app=lease.info.app, instance_id=instance_id)
        return lease.snapshot()

    def _set_status(
        self,
        lease: _Lease,
        status: InstanceStatus,
        *,
        overridden: InstanceStatus,
        last_dirty_timestamp: int | None,
    ) -> None:
        dirty = lease.info.last_dirty_timestamp
        if last_dirty_timestamp is not None and last_dirty_timestamp > dirty:
            dirty = last_dirty_timestamp
        lease.info = dataclasses.replace(
            lease.info, status=status, overridden_status=overridden, last_dirty_timestamp=dirty
        )
        if status == InstanceStatus.UP and lease.service_up_ms == 0:
            lease.service_up_ms = self._now_ms()
        self._record_change(lease, ActionType.MODIFIED)

    # ----- eviction and self-preservation -----
    def _prune_renewals(self) -> None:
        horizon = self._now() - SELF_PRESERVATION_WINDOW_SECS
        while self._renewals and self._renewals[0] < horizon:
            self._renewals.popleft()

    def renewals_last_minute(self) -> int:
        self._prune_renewals()
        return len(self._renewals)

    def expected_renewals_last_minute(self) -> float:
        """Heartbeats the registered instances should have sent in the last minute.

        Each instance counts for the part of the minute it has been registered, at its own
        renewal interval (the real server assumes 30 s for everyone and lags a minute behind).
        """
        now_ms = self._now_ms()
        expected = 0.0
        for leases in self._apps.values():
            for lease in leases.values():
                registered_secs = min(SELF_PRESERVATION_WINDOW_SECS, (now_ms - lease.registration_ms) / 1000)
                expected += int(registered_secs // lease.info.renewal_interval_secs)
        return expected

    def is_lease_expiration_enabled(self) -> bool:
        """False while self-preservation holds: renewals fell below the threshold of expected."""
        if not self.self_preservation:
            return True
        expected = self.expected_renewals_last_minute()
        return self.renewals_last_minute() >= expected * self._renewal_percent_threshold

    def evict_expired(self) -> list[RegisteredInstance]:
        """Remove every instance whose lease expired; they appear in the delta as DELETED."""
        if not self.is_lease_expiration_enabled():
            log.warning(
                "self-preservation: not evicting",
                renewals_last_minute=self.renewals_last_minute(),
                expected=self.expected_renewals_last_minute(),
            )
            return []
        now_ms = self._now_ms()
        expired = [lease for leases in self._apps.values() for lease in leases.values() if lease.is_expired(now_ms)]
        evicted = [self._remove(lease.info.app, lease.info.instance_id, evicted=True) for lease in expired]
        for instance in evicted:
            log.info("evicted: lease expired", app=instance.app, instance_id=instance.instance_id)
        self._prune_recent_changes()
        return evicted

    # ----- queries -----
    @property
    def hashcode(self) -> str:
        return apps_hashcode(lease.info.status.value for leases in self._apps.values() for lease in leases.values())

    def _view(self, instances: Iterable[RegisteredInstance], hashcode: str | None = None) -> RegistryView:
        by_app: dict[str, list[RegisteredInstance]] = {}
        for instance in instances:
            by_app.setdefault(instance.app, []).append(instance)
        applications = tuple(ApplicationView(name, tuple(by_app[name])) for name in sorted(by_app))
        return RegistryView(self._version, self.hashcode if hashcode is None else hashcode, applications)

    def _all_instances(self) -> list[RegisteredInstance]:
        return [lease.snapshot() for leases in self._apps.values() for lease in leases.values()]

    def applications(self) -> RegistryView:
        """The full registry."""
        return self._view(self._all_instances())

    def delta(self) -> RegistryView:
        """Instances changed within the retention window, each in its latest state and action.

        The hashcode is the full registry's, so that a client can check its merged copy.
        """
        self._prune_recent_changes()
        latest: dict[tuple[str, str], RegisteredInstance] = {}
        for change in self._recent_changes:
            key = (change.instance.app, change.instance.instance_id)
            latest.pop(key, None)
            latest[key] = change.instance
        current = [
            self._current_or_recorded(instance.app, instance.instance_id, instance) for instance in latest.values()
        ]
        return self._view(current)

    def _current_or_recorded(self, app: str, instance_id: str, recorded: RegisteredInstance) -> RegisteredInstance:
        # A registered instance shows its live lease (e.g. its last renewal), as the real server does.
        if recorded.action_type == ActionType.DELETED:
            return recorded
        lease = self._apps.get(app, {}).get(instance_id)
        return lease.snapshot() if lease is not None else recorded

    def application(self, app: str) -> ApplicationView | None:
        leases = self._apps.get(app.upper())
        if not leases:
            return None
        return ApplicationView(app.upper(), tuple(lease.snapshot() for lease in leases.values()))

    def instance(self, app: str, instance_id: str) -> RegisteredInstance:
        return self._find_lease(app, instance_id).snapshot()

    def find_instance(self, instance_id: str) -> RegisteredInstance:
        """An instance by id alone, in whichever app it is registered (`GET /instances/{id}`)."""
        for leases in self._apps.values():
            lease = leases.get(instance_id)
            if lease is not None:
                return lease.snapshot()
        raise InstanceNotFound(instance_id)

    def by_vip(self, vip: str, *, secure: bool = False) -> RegistryView:
        """Instances whose (secure) VIP address list contains `vip`."""
        wanted = vip.strip().lower()

        def matches(instance: RegisteredInstance) -> bool:
            addresses = instance.info.secure_vip_address if secure else instance.info.vip_address
            return wanted in {address.strip().lower() for address in addresses.split(",")}

        selected = [instance for instance in self._all_instances() if matches(instance)]
        return self._view(selected, hashcode=apps_hashcode(instance.status.value for instance in selected))
