"""The registry's wire formats: parsing a registration body, rendering Eureka XML and JSON.

XML is what py-eureka-client parses (it needs the `enabled` and `class` attributes and integer
timestamps); JSON follows the Eureka Jackson codec for clients that ask for it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any
from xml.etree import ElementTree
from xml.etree.ElementTree import Element, SubElement

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from registry.service import (
    DEFAULT_DATA_CENTER_CLASS,
    DEFAULT_RENEWAL_INTERVAL_SECS,
    ApplicationView,
    InstanceInfo,
    InstanceStatus,
    RegisteredInstance,
    RegistryView,
)

XML_MEDIA_TYPE = "application/xml"
JSON_MEDIA_TYPE = "application/json"

# Metadata keys become XML element names, so one bad key would break every client's registry fetch.
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
# Java clients send an empty map as {"@class": "java.util.Collections$EmptyMap"}.
_JAVA_MAP_CLASS_KEY = "@class"
_EMPTY_MAP_JSON = {"@class": "java.util.Collections$EmptyMap"}

NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# An optional text field that clients send as null, "" or a value: null reads as "".
Text = Annotated[str, BeforeValidator(lambda value: "" if value is None else value)]


class FieldError(BaseModel):
    field: str
    message: str


class BadRequest(ValueError):
    """Input the registry refuses: answered 400 problem+json, the protocol's answer (not FastAPI's 422)."""

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class RegistrationError(BadRequest):
    """The POST body is not a registration the registry can accept (the real server answers 400)."""


class _EurekaModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class PortIn(_EurekaModel):
    number: int = Field(alias="$", ge=0, le=65535)
    enabled: bool = Field(default=True, alias="@enabled")

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, value: Any) -> Any:
        if isinstance(value, int | str) and not isinstance(value, bool):
            return {"$": value}
        return value


def _string_map(value: Any) -> Any:
    """Eureka metadata is Map<String, String>: stringify scalars, drop Java's @class marker."""
    if not isinstance(value, dict):
        return value
    result: dict[Any, Any] = {}
    for key, item in value.items():
        if key == _JAVA_MAP_CLASS_KEY:
            continue
        if isinstance(item, bool):
            item = str(item).lower()
        elif isinstance(item, int | float):
            item = str(item)
        elif item is None:
            item = ""
        result[key] = item
    return result


def _check_xml_names(value: dict[str, str]) -> dict[str, str]:
    bad = [key for key in value if not _XML_NAME.match(key)]
    if bad:
        raise ValueError(f"metadata keys must be XML element names: {bad}")
    return value


# Eureka metadata: a string map whose keys are valid XML element names.
MetadataMap = Annotated[dict[str, str], BeforeValidator(_string_map), AfterValidator(_check_xml_names)]


class DataCenterInfoIn(_EurekaModel):
    class_name: str = Field(default=DEFAULT_DATA_CENTER_CLASS, alias="@class")
    name: NonBlank
    metadata: MetadataMap = Field(default_factory=dict)


class LeaseInfoIn(_EurekaModel):
    renewal_interval_in_secs: int = DEFAULT_RENEWAL_INTERVAL_SECS
    duration_in_secs: int = 0


class InstanceIn(_EurekaModel):
    """The `instance` object of `POST /eureka/apps/{APP}`; unknown fields are ignored."""

    instance_id: NonBlank
    host_name: NonBlank
    app: NonBlank
    ip_addr: NonBlank
    status: InstanceStatus = InstanceStatus.UP
    # XML and the Java clients' register body say "overriddenstatus"; newer JSON says "overriddenStatus".
    overridden_status: InstanceStatus = Field(
        default=InstanceStatus.UNKNOWN,
        validation_alias=AliasChoices("overriddenstatus", "overriddenStatus"),
    )
    port: PortIn = Field(default_factory=lambda: PortIn.model_validate({"$": 7001, "@enabled": True}))
    secure_port: PortIn = Field(default_factory=lambda: PortIn.model_validate({"$": 7002, "@enabled": False}))
    country_id: int = 1
    data_center_info: DataCenterInfoIn
    lease_info: LeaseInfoIn = Field(default_factory=LeaseInfoIn)
    metadata: MetadataMap = Field(default_factory=dict)
    home_page_url: Text = ""
    status_page_url: Text = ""
    health_check_url: Text = ""
    secure_health_check_url: Text = ""
    vip_address: Text = ""
    secure_vip_address: Text = ""
    app_group_name: Text = ""
    asg_name: Text = ""
    is_coordinating_discovery_server: bool = False
    last_dirty_timestamp: int = 0

    @field_validator("status", "overridden_status", mode="before")
    @classmethod
    def _upper_status(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    def to_instance_info(self) -> InstanceInfo:
        """The domain record: the fields of the same name as they are, the nested wire objects flattened."""
        same = {name: getattr(self, name) for name in _SAME_NAMED_FIELDS}
        return InstanceInfo(
            **same,
            app=self.app.upper(),
            port=self.port.number,
            port_enabled=self.port.enabled,
            secure_port=self.secure_port.number,
            secure_port_enabled=self.secure_port.enabled,
            data_center_class=self.data_center_info.class_name,
            data_center_name=self.data_center_info.name,
            data_center_metadata=dict(self.data_center_info.metadata),
            renewal_interval_secs=self.lease_info.renewal_interval_in_secs,
            duration_secs=self.lease_info.duration_in_secs,
            metadata=dict(self.metadata),
        )


# The InstanceInfo fields the wire model has under the same name and type (copied as they are).
_SAME_NAMED_FIELDS = tuple(
    field.name for field in dataclasses.fields(InstanceInfo)
    if field.name in InstanceIn.model_fields and field.name not in {"app", "port", "secure_port", "metadata"})


class RegistrationBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    instance: InstanceIn


def parse_registration(body: Any, path_app: str) -> InstanceInfo:
    """Validate a register body as the real server does; raise RegistrationError for a 400."""
    try:
        registration = RegistrationBody.model_validate(body)
    except ValidationError as exc:
        errors = [
            FieldError(field=".".join(str(part) for part in error["loc"]), message=error["msg"])
            for error in exc.errors(include_url=False)
        ]
        raise RegistrationError("invalid registration body", errors) from None
    info = registration.instance.to_instance_info()
    if info.app != path_app.upper():
        raise RegistrationError(
            f"app {info.app!r} in the body differs from {path_app.upper()!r} in the path",
            [FieldError(field="instance.app", message="must match the application in the path")],
        )
    return info


# ---------- XML ----------


def _text(parent: Element, tag: str, text: str | int, **attributes: str) -> Element:
    element = SubElement(parent, tag, attributes)
    element.text = str(text)
    return element


def _bool(value: bool) -> str:
    return "true" if value else "false"


def instance_element(instance: RegisteredInstance) -> Element:
    info = instance.info
    element = Element("instance")
    _text(element, "instanceId", info.instance_id)
    _text(element, "hostName", info.host_name)
    _text(element, "app", info.app)
    _text(element, "ipAddr", info.ip_addr)
    _text(element, "status", info.status.value)
    _text(element, "overriddenstatus", info.overridden_status.value)
    _text(element, "port", info.port, enabled=_bool(info.port_enabled))
    _text(element, "securePort", info.secure_port, enabled=_bool(info.secure_port_enabled))
    _text(element, "countryId", info.country_id)
    data_center = SubElement(element, "dataCenterInfo", {"class": info.data_center_class})
    _text(data_center, "name", info.data_center_name)
    if info.data_center_metadata:
        data_center_metadata = SubElement(data_center, "metadata")
        for key, value in info.data_center_metadata.items():
            _text(data_center_metadata, key, value)
    lease = SubElement(element, "leaseInfo")
    for tag, number in _lease_fields(instance).items():
        _text(lease, tag, number)
    metadata = SubElement(element, "metadata")
    for key, value in info.metadata.items():
        _text(metadata, key, value)
    for tag, text in _optional_strings(info).items():
        _text(element, tag, text)
    _text(element, "isCoordinatingDiscoveryServer", _bool(info.is_coordinating_discovery_server))
    _text(element, "lastUpdatedTimestamp", instance.last_updated_timestamp)
    _text(element, "lastDirtyTimestamp", info.last_dirty_timestamp)
    _text(element, "actionType", instance.action_type.value)
    if info.asg_name:
        _text(element, "asgName", info.asg_name)
    return element


def _lease_fields(instance: RegisteredInstance) -> dict[str, int]:
    return {
        "renewalIntervalInSecs": instance.info.renewal_interval_secs,
        "durationInSecs": instance.info.duration_secs,
        "registrationTimestamp": instance.registration_timestamp,
        "lastRenewalTimestamp": instance.last_renewal_timestamp,
        "evictionTimestamp": instance.eviction_timestamp,
        "serviceUpTimestamp": instance.service_up_timestamp,
    }


def _optional_strings(info: InstanceInfo) -> dict[str, str]:
    """String fields the real server omits when unset (an empty XML element would parse as None)."""
    fields = {
        "appGroupName": info.app_group_name,
        "homePageUrl": info.home_page_url,
        "statusPageUrl": info.status_page_url,
        "healthCheckUrl": info.health_check_url,
        "secureHealthCheckUrl": info.secure_health_check_url,
        "vipAddress": info.vip_address,
        "secureVipAddress": info.secure_vip_address,
    }
    return {tag: text for tag, text in fields.items() if text}


def application_element(application: ApplicationView) -> Element:
    element = Element("application")
    _text(element, "name", application.name)
    for instance in application.instances:
        element.append(instance_element(instance))
    return element


def applications_element(view: RegistryView) -> Element:
    element = Element("applications")
    _text(element, "versions__delta", view.versions_delta)
    _text(element, "apps__hashcode", view.apps_hashcode)
    for application in view.applications:
        element.append(application_element(application))
    return element


def to_xml(element: Element) -> str:
    return ElementTree.tostring(element, encoding="unicode")


# ---------- JSON ----------


def instance_json(instance: RegisteredInstance) -> dict[str, Any]:
    info = instance.info
    body: dict[str, Any] = {
        "instanceId": info.instance_id,
        "hostName": info.host_name,
        "app": info.app,
        "ipAddr": info.ip_addr,
        "status": info.status.value,
        "overriddenStatus": info.overridden_status.value,
        "port": {"$": info.port, "@enabled": _bool(info.port_enabled)},
        "securePort": {"$": info.secure_port, "@enabled": _bool(info.secure_port_enabled)},
        "countryId": info.country_id,
        "dataCenterInfo": {"@class": info.data_center_class, "name": info.data_center_name},
        "leaseInfo": _lease_fields(instance),
        "metadata": dict(info.metadata) or dict(_EMPTY_MAP_JSON),
    }
    if info.data_center_metadata:
        body["dataCenterInfo"]["metadata"] = dict(info.data_center_metadata)
    body.update(_optional_strings(info))
    body["isCoordinatingDiscoveryServer"] = _bool(info.is_coordinating_discovery_server)
    body["lastUpdatedTimestamp"] = str(instance.last_updated_timestamp)
    body["lastDirtyTimestamp"] = str(info.last_dirty_timestamp)
    body["actionType"] = instance.action_type.value
    if info.asg_name:
        body["asgName"] = info.asg_name
    return body


def application_json(application: ApplicationView) -> dict[str, Any]:
    return {
        "name": application.name,
        "instance": [instance_json(instance) for instance in application.instances],
    }


def applications_json(view: RegistryView) -> dict[str, Any]:
    return {
        "applications": {
            "versions__delta": str(view.versions_delta),
            "apps__hashcode": view.apps_hashcode,
            "application": [application_json(application) for application in view.applications],
        }
    }
