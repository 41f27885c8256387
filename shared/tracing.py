"""W3C trace context for every request, and OpenTelemetry tracing that configuration switches on (off by default)."""

from __future__ import annotations

import os
import re
import secrets
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
# Probes and scrapes would drown the real traces.
_EXCLUDED_URLS = "/health$,/ready$,/metrics$"


class _State:
    """Process-wide: OpenTelemetry's tracer provider and the aiohttp patch are global by design."""

    enabled = False
    provider: TracerProvider | None = None
    memory: InMemorySpanExporter | None = None
    aiohttp_instrumented = False


def valid_traceparent(value: str) -> bool:
    """W3C Trace Context: version 00 format, not version ff, trace and parent ids not all zero."""
    match = _TRACEPARENT.match(value)
    if match is None:
        return False
    version, trace_id, parent_id = match.groups()
    return version != "ff" and trace_id != "0" * 32 and parent_id != "0" * 16


def new_traceparent() -> str:
    ids = secrets.token_hex(24)  # one call for both ids: this runs for every request that arrives without one
    return f"00-{ids[:32]}-{ids[32:]}-01"


def current_traceparent() -> str | None:
    """The active OpenTelemetry span as a traceparent, when tracing is on and a span is active."""
    if not _State.enabled:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def request_traceparent(incoming: str) -> str:
    """The traceparent a request runs under: the server span's when tracing is on, else the caller's, else new.

    With tracing on, the OpenTelemetry middleware (outermost) has already continued the caller's trace or
    started one, and its aiohttp instrumentation sends that trace on: so logs must name the same trace.
    """
    return current_traceparent() or (incoming if valid_traceparent(incoming) else new_traceparent())


def configure_tracing(app: FastAPI, settings: ServiceSettings) -> None:
    """With OTEL_ENABLED=true: spans for the app's requests and every aiohttp client call, sent to the exporter.

    OTEL_TRACES_EXPORTER picks it: `otlp` (OTLP over HTTP; OTEL_EXPORTER_OTLP_ENDPOINT, default
    http://localhost:4318), `console` (one JSON line per span on stdout), `memory` (kept in the process, for
    tests) or `none`.
    """
    if not settings.otel_enabled:
        return
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    provider = _tracer_provider(settings)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=_EXCLUDED_URLS)
    if not _State.aiohttp_instrumented:
        # Patches aiohttp.ClientSession: sessions made from now on (in the lifespan) get a trace config.
        AioHttpClientInstrumentor().instrument(tracer_provider=provider)
        _State.aiohttp_instrumented = True
    _State.enabled = True
    log.info("tracing enabled", exporter=settings.otel_traces_exporter)


def _tracer_provider(settings: ServiceSettings) -> TracerProvider:
    if _State.provider is not None:
        return _State.provider
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    attributes: dict[str, Any] = {}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = settings.app_name.lower()
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter = settings.otel_traces_exporter
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter == "console":
        console = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + os.linesep)
        provider.add_span_processor(BatchSpanProcessor(console))
    elif exporter == "memory":
        _State.memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_State.memory))
    # The global provider can be set once per process; the instrumentations are handed it explicitly anyway.
    trace.set_tracer_provider(provider)
    _State.provider = provider
    return provider


def finished_spans() -> tuple[ReadableSpan, ...]:
    """The spans ended so far (exporter `memory` only)."""
    return _State.memory.get_finished_spans() if _State.memory is not None else ()


def disable_tracing() -> None:
    """Undo the process-wide parts (tests): aiohttp unpatched, pending spans flushed, memory cleared."""
    if _State.aiohttp_instrumented:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

        AioHttpClientInstrumentor().uninstrument()
        _State.aiohttp_instrumented = False
    if _State.provider is not None:
        _State.provider.force_flush()
    if _State.memory is not None:
        _State.memory.clear()
    _State.enabled = False
