"""One OpenAPI document for the whole fleet: each service's own, cut to the routes the gateway proxies.

Services are fetched through the registry (like any proxied call), the merged document is kept for a few
seconds, and a service that cannot be reached is left out with a note rather than failing the page.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Mapping
from typing import Any

import structlog

from gateway.proxy import CallContext, Gateway
from gateway.routes import Route, RouteTable
from shared.errors import DomainError

log = structlog.get_logger(__name__)

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
TITLE = "customer-service API"
# The gateway knows which routes need a token (forward-auth): it says so, and Swagger UI offers "Authorize".
BEARER = "bearerAuth"
BEARER_SCHEME = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                 "description": "An access token from POST /api/auth/login (or a service token)."}


def _rewrite_refs(node: Any, renames: Mapping[str, str]) -> Any:
    """A copy of `node` with every `$ref` in `renames` pointed at its new name."""
    if not renames:
        return node
    if isinstance(node, dict):
        return {
            key: renames.get(value, value) if key == "$ref" and isinstance(value, str)
            else _rewrite_refs(value, renames)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item, renames) for item in node]
    return node


def _ref(kind: str, name: str) -> str:
    return f"#/components/{kind}/{name}"


def _component_renames(app: str, own: Mapping[str, Any], merged: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Refs of `app`'s components whose name is already taken by a different definition → `<APP>.<name>`.

    Repeated until nothing changes: renaming one schema changes the definitions that refer to it.
    """
    renames: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for kind, definitions in own.items():
            if not isinstance(definitions, dict):
                continue
            for name, definition in definitions.items():
                ref = _ref(kind, name)
                if ref in renames:
                    continue
                taken = merged.get(kind, {}).get(name)
                if taken is not None and taken != _rewrite_refs(definition, renames):
                    renames[ref] = _ref(kind, f"{app}.{name}")
                    changed = True
    return renames


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node)) if node else set()
    return set()


def _used_components(paths: Mapping[str, Any], components: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Only the components the kept paths reach (directly or through other components)."""
    wanted = _refs(paths)
    seen: set[str] = set()
    while wanted - seen:
        ref = (wanted - seen).pop()
        seen.add(ref)
        parts = ref.split("/")
        if len(parts) == 4 and parts[:2] == ["#", "components"]:
            wanted |= _refs(components.get(parts[2], {}).get(parts[3]))
    used: dict[str, Any] = {}
    for kind, definitions in sorted(components.items()):
        kept = {name: d for name, d in sorted(definitions.items()) if _ref(kind, name) in seen}
        if kept or kind == "securitySchemes":
            used[kind] = kept or dict(definitions)
    return used


def _route_of(routes: RouteTable, app: str, method: str, path: str) -> Route | None:
    """The route that sends `method path` to `app`, if any (internal endpoints such as /validate or the saga's
    steps have none)."""
    route = routes.match(method.upper(), path)
    return route if route is not None and route.routed and route.app == app else None


def merge_openapi(
    routes: RouteTable, documents: Mapping[str, Mapping[str, Any]], unavailable: Mapping[str, str]
) -> dict[str, Any]:
    """Merge the services' documents (app name → document) into the gateway's; `unavailable` names the absent."""
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    version = "3.1.0"
    for app in sorted(documents):
        document = documents[app]
        version = str(document.get("openapi", version))
        own_components = document.get("components") or {}
        renames = _component_renames(app, own_components, components)
        for kind, definitions in own_components.items():
            if not isinstance(definitions, dict):
                continue
            target = components.setdefault(kind, {})
            for name, definition in definitions.items():
                new_name = renames.get(_ref(kind, name), _ref(kind, name)).rsplit("/", 1)[1]
                target.setdefault(new_name, _rewrite_refs(definition, renames))
        for path, item in (document.get("paths") or {}).items():
            operations = {m: (op, route) for m, op in item.items()
                          if m in HTTP_METHODS and (route := _route_of(routes, app, m, path)) is not None}
            if not operations:
                continue
            merged_item = paths.setdefault(path, {})
            for key, value in item.items():
                if key not in HTTP_METHODS:
                    merged_item.setdefault(key, _rewrite_refs(copy.deepcopy(value), renames))
            for method, (original, route) in operations.items():
                operation = _rewrite_refs(copy.deepcopy(original), renames)
                if not route.public and "security" not in operation:
                    operation["security"] = [{BEARER: []}]
                    components.setdefault("securitySchemes", {}).setdefault(BEARER, BEARER_SCHEME)
                operation_id = operation.get("operationId")
                if operation_id in operation_ids:
                    operation["operationId"] = operation_id = f"{app}.{operation_id}"
                if operation_id:
                    operation_ids.add(operation_id)
                operation["tags"] = operation.get("tags") or [app]
                merged_item[method] = operation
    description = "Every route the gateway serves, merged from each service's own OpenAPI document."
    if unavailable:
        missing = "; ".join(f"{app} ({reason})" for app, reason in sorted(unavailable.items()))
        description += f"\n\n**Not included, unavailable right now:** {missing}."
    merged: dict[str, Any] = {
        "openapi": version,
        "info": {"title": TITLE, "version": "1", "description": description},
        "paths": dict(sorted(paths.items())),
        "x-services": {"included": sorted(documents), "unavailable": dict(sorted(unavailable.items()))},
    }
    used = _used_components(paths, components)
    if used:
        merged["components"] = used
    return merged


class MergedOpenApi:
    """The merged document, rebuilt at most once per `ttl_secs` and by one request at a time."""

    def __init__(self, gateway: Gateway, ttl_secs: float, fetch_timeout_secs: float) -> None:
        self.gateway = gateway
        self.ttl_secs = ttl_secs
        self.fetch_timeout_secs = fetch_timeout_secs
        self._document: dict[str, Any] | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def document(self, ctx: CallContext) -> dict[str, Any]:
        if self._document is not None and time.monotonic() < self._expires:
            return self._document
        async with self._lock:
            if self._document is not None and time.monotonic() < self._expires:
                return self._document
            apps = sorted({route.app for route in self.gateway.routes.routes})
            fetched = await asyncio.gather(*(self._fetch(app, ctx) for app in apps))
            documents = {app: doc for app, doc, _ in fetched if doc is not None}
            unavailable = {app: reason for app, doc, reason in fetched if doc is None}
            self._document = merge_openapi(self.gateway.routes, documents, unavailable)
            self._expires = time.monotonic() + self.ttl_secs
            return self._document

    async def _fetch(self, app: str, ctx: CallContext) -> tuple[str, dict[str, Any] | None, str]:
        try:
            document = await self.gateway.get_json(app, "/openapi.json", ctx, self.fetch_timeout_secs)
        except DomainError as exc:
            log.info("openapi document left out", app=app, reason=exc.detail)
            return app, None, exc.detail
        if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
            return app, None, "its /openapi.json is not an OpenAPI document"
        return app, document, ""
