"""The bus's AsyncAPI 3.0 document: valid against the specification's own JSON schema, one channel, `send` operation
and message per event type of the catalogue, served by the gateway without a token.

asyncapi-3.0.0.schema.json is the specification's schema as published (@asyncapi/specs 6.11.1,
schemas/3.0.0-without-$id.json, Apache-2.0), re-encoded without whitespace.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from shared.asyncapi import asyncapi_document
from shared.events import CATALOGUE, EventData, OrderConfirmed, envelope
from tests.gateway.conftest import GatewayUnderTest

SPEC_SCHEMA = Path(__file__).with_name("asyncapi-3.0.0.schema.json")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SPEC_SCHEMA.read_text(encoding="utf-8")))


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node`, or what its local `$ref` points at (JSON pointer into the document)."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def test_the_document_is_valid_asyncapi_3(validator: jsonschema.Draft7Validator) -> None:
    document = asyncapi_document()
    errors = [f"{error.json_path}: {error.message[:200]}" for error in validator.iter_errors(document)]
    assert errors == []
    assert document["asyncapi"] == "3.0.0"
    server = document["servers"]["nats"]
    assert server["protocol"] == "nats"
    assert server["host"] == "{host}" and "host" in server["variables"]
    assert resolve(document, server["security"][0])["type"] == "userPassword"


def test_the_validator_catches_what_a_broken_document_would_get_wrong(validator: jsonschema.Draft7Validator) -> None:
    """The schema check is not vacuous: an AsyncAPI 2 verb or an unknown key is refused."""
    document = json.loads(json.dumps(asyncapi_document()))
    next(iter(document["operations"].values()))["action"] = "publish"
    next(iter(document["channels"].values()))["subscribe"] = {}
    assert len(list(validator.iter_errors(document))) == 2


@pytest.mark.parametrize("model", list(CATALOGUE.values()), ids=list(CATALOGUE))
def test_every_event_type_has_its_channel_operation_and_message(model: type[EventData]) -> None:
    document = asyncapi_document()
    event_type = model.event_type()
    channel = document["channels"][event_type]
    assert channel["address"] == f"events.{event_type}"
    assert channel["x-producer"] == model.producer
    assert channel["x-consumers"] == sorted(model.consumers)
    for consumer in model.consumers:
        assert consumer in channel["description"]

    sends = [op for op in document["operations"].values() if resolve(document, op["channel"]) is channel]
    assert len(sends) == 1
    assert sends[0]["action"] == "send" and sends[0]["x-producer"] == model.producer
    [message_ref] = sends[0]["messages"]
    message = resolve(document, message_ref)
    assert message is resolve(document, next(iter(channel["messages"].values())))

    assert "Nats-Msg-Id" in message["headers"]["properties"]
    payload = message["payload"]
    envelope = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "orderid", "data"}
    assert set(payload["properties"]) == envelope
    assert payload["properties"]["type"]["const"] == event_type
    data = resolve(document, payload["properties"]["data"])
    assert set(data["properties"]) == set(model.model_fields)
    assert set(data["required"]) <= set(model.model_fields)


def test_a_real_event_validates_against_its_message_payload() -> None:
    """What the relay publishes (shared.events.envelope) is what the document says."""
    document = asyncapi_document()
    event = envelope(OrderConfirmed(order_id="o-1", customer_id="c-1", total_minor=2500, currency="EUR"), "o-1",
                     time=datetime.now(UTC), order_id="o-1")
    payload = document["channels"][OrderConfirmed.event_type()]["messages"]["OrderConfirmed"]
    schema = {**resolve(document, payload)["payload"], "components": document["components"]}
    jsonschema.validate(event.model_dump(mode="json"), schema, cls=jsonschema.Draft202012Validator)
    wrong = {**event.model_dump(mode="json"), "data": {"order_id": "o-1"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, schema, cls=jsonschema.Draft202012Validator)


async def test_the_gateway_serves_it_beside_openapi_without_a_token(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        response = await client.get("/asyncapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == asyncapi_document()
    assert gw.seen.validate_calls == []  # answered by the gateway itself: nothing proxied, nothing checked
