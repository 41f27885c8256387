"""The bus's contract as an AsyncAPI 3.0 document, generated from the event catalogue (shared/events.py).

One channel per event type (its NATS subject), one `send` operation per channel (its producer's), one message per
channel whose payload is the CloudEvents envelope in structured mode, with `type` fixed and `data` the model's own
JSON schema (pydantic's), and the headers the relay sets. The gateway serves it at /asyncapi.json, beside the fleet's
OpenAPI document, so what a subscriber may rely on is read from the same models the producers and consumers use.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.events import (
    CATALOGUE,
    CONSUMERS,
    DEAD_LETTER_ROOT,
    DEAD_LETTER_STREAM,
    EVENTS_STREAM,
    SOURCE_PREFIX,
    SUBJECT_ROOT,
    CloudEvent,
    EventData,
    durable_name,
)

ASYNCAPI_VERSION = "3.0.0"
TITLE = "customer-service events"
SERVER = "nats"
SECURITY_SCHEME = "natsUser"
# The relay publishes the whole CloudEvent as the message body (CloudEvents' structured mode, JSON format).
CONTENT_TYPE = "application/cloudevents+json"
SCHEMAS = "#/components/schemas/"

DESCRIPTION = f"""\
Every state change of every service of the fleet, published on NATS JetStream (stream `{EVENTS_STREAM}`, subjects
`{SUBJECT_ROOT}.>`) through each service's transactional outbox: no event without its change, no change without
its event.

- A message is a CloudEvents 1.0 event in structured mode: the JSON body is the envelope, its `data` the event's own
  fields. `type` is `<name>.v<version>` and the subject `{SUBJECT_ROOT}.<type>`; `subject` names the aggregate that
  changed (an order, a SKU, a saga); the extension `orderid` names the order the event is about, when there is one.
- `Nats-Msg-Id` is the event's id: JetStream drops a message it has already stored within its duplicate window, so a
  relay that publishes again after a crash adds nothing. Within one aggregate, events arrive in commit order.
- A change that would break a consumer is a new type (`v2`) published beside the old one, never an edit of it.
- Each service connects with its own NATS user and may publish only its own subjects; nothing is anonymous. A
  consumer that cannot apply a message after its delivery limit sends it to `{DEAD_LETTER_ROOT}.<package>.<consumer>`
  (stream `{DEAD_LETTER_STREAM}`).
- Besides the consumers each channel names, the gateway's dashboard and `customer-service events tail` read every
  event.
"""


def _consumers_of(model: type[EventData]) -> list[str]:
    """The durable consumers (`<package>_<name>`) whose filter subject takes this event type."""
    subject = model.nats_subject().split(".")
    return [durable_name(package, name)
            for package, consumers in sorted(CONSUMERS.items())
            for name, filter_subject in sorted(consumers.items())
            if _matches(filter_subject.split("."), subject)]


def _matches(pattern: list[str], subject: list[str]) -> bool:
    """NATS subject matching: `*` one token, `>` the rest (one token at least)."""
    for index, token in enumerate(pattern):
        if token == ">":
            return len(subject) > index
        if index >= len(subject) or token not in ("*", subject[index]):
            return False
    return len(pattern) == len(subject)


def _payload(model: type[EventData], envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope's schema with this event's `type` and `source` fixed and its data model as `data`."""
    payload = copy.deepcopy(envelope)
    payload["title"] = f"{model.__name__} event"
    payload["description"] = model.summary
    properties = payload["properties"]
    properties["type"] = {**properties["type"], "const": model.event_type()}
    properties["source"] = {**properties["source"], "const": f"{SOURCE_PREFIX}{model.producer}"}
    properties["data"] = {"$ref": f"{SCHEMAS}{model.__name__}"}
    return payload


HEADERS = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {"type": "string", "maxLength": 64,
                        "description": "The event's id (the envelope's `id`): JetStream's de-duplication key."},
    },
    "required": ["Nats-Msg-Id"],
}


@functools.cache
def asyncapi_document() -> dict[str, Any]:
    """The document (built once per process: the catalogue is code, fixed while it runs)."""
    models: list[type[BaseModel]] = [CloudEvent, *CATALOGUE.values()]
    _, top = models_json_schema([(model, "serialization") for model in models], ref_template=SCHEMAS + "{model}")
    schemas: dict[str, Any] = dict(sorted(top["$defs"].items()))
    envelope = schemas["CloudEvent"]
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for event_type, model in CATALOGUE.items():
        message = model.__name__
        consumers = sorted(model.consumers)
        durables = _consumers_of(model)
        said = f"Consumers: {', '.join(consumers)}." if consumers else "No service consumes it yet."
        messages[message] = {
            "name": message,
            "title": f"{message} (v{model.version})",
            "summary": model.summary,
            "contentType": CONTENT_TYPE,
            "headers": HEADERS,
            "payload": _payload(model, envelope),
            "x-event-type": event_type,
        }
        channels[event_type] = {
            "address": model.nats_subject(),
            "title": event_type,
            "summary": model.summary,
            "description": f"Published by {model.producer}. {said}",
            "servers": [{"$ref": f"#/servers/{SERVER}"}],
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
            "x-producer": model.producer,
            "x-consumers": consumers,
            "x-durable-consumers": durables,
        }
        operations[f"send.{event_type}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{event_type}"},
            "messages": [{"$ref": f"#/channels/{event_type}/messages/{message}"}],
            "title": f"{model.producer} publishes {event_type}",
            "summary": model.summary,
            "description": (f"Written to {model.producer}'s outbox in the transaction of the change it reports; "
                            f"its relay publishes it after the commit. {said}"),
            "x-producer": model.producer,
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:customer-service:events",
        "info": {"title": TITLE, "version": "1", "description": DESCRIPTION},
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            SERVER: {
                "host": "{host}",
                "protocol": "nats",
                "title": "The fleet's NATS server (JetStream)",
                "description": "Where the fleet's services are told to connect by NATS_URL.",
                "variables": {"host": {"default": "localhost:4222",
                                       "description": "host:port of the NATS server (NATS_URL)."}},
                "security": [{"$ref": f"#/components/securitySchemes/{SECURITY_SCHEME}"}],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "userPassword",
                    "description": ("One NATS user per service package (its name), allowed to publish its own "
                                    "subjects only; `gateway` may subscribe to events only; no anonymous user."),
                },
            },
        },
    }
