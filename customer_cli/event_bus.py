"""The CLI's view of the bus: follow the events as they are published, list and replay dead letters, and the
event catalogue as the table README shows.

It connects as the `operator` NATS user (the one user that may read everything, publish anywhere and delete a
dead letter); `customer-service events …` in customer_cli/main.py are the commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, RawStreamMsg
from pydantic import ValidationError

from shared.bus import BusConfig, connect
from shared.events import (
    CATALOGUE,
    CONSUMERS,
    DEAD_LETTER_ROOT,
    DEAD_LETTER_STREAM,
    EVENTS_STREAM,
    SUBJECT_ROOT,
    CloudEvent,
    dead_letter_subject,
    durable_name,
)

ALL_EVENTS = f"{SUBJECT_ROOT}.>"
# What the summary of an event's data is cut to, so that one event stays one line.
SUMMARY_CHARS = 90
# Events received and not yet shown, at most.
TAIL_BUFFER = 1024


class BusUnreachable(Exception):
    """The bus did not take the connection (down, or the credentials refused)."""


async def open_connection(config: BusConfig, *, connect_secs: float = 5.0) -> NATS:
    """A connection as `config.user` that reconnects by itself once made (a tail outlives a broker's restart), or
    BusUnreachable, at once when the server refuses the credentials, else after `connect_secs` without one, saying
    the server's last word (in a line, not nats-py's traceback per attempt)."""
    errors: list[Exception] = []
    refused = asyncio.Event()

    async def heard(error: Exception) -> None:
        errors.append(error)
        if "authorization violation" in str(error).lower():
            refused.set()  # trying again would only be refused again

    connecting = asyncio.create_task(connect(config, reconnect_forever=True, on_error=heard))
    refusal = asyncio.create_task(refused.wait())
    await asyncio.wait({connecting, refusal}, timeout=connect_secs, return_when=asyncio.FIRST_COMPLETED)
    refusal.cancel()
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    last: BaseException = errors[-1] if errors else TimeoutError(f"no answer within {connect_secs}s")
    raise BusUnreachable(f"the bus at {config.url} (as {config.user or 'nobody'}) did not take the connection: "
                         f"{str(last) or type(last).__name__}")


# --- which events ---------------------------------------------------------------------------------------------


def families() -> list[str]:
    return sorted({model.name.split(".")[0] for model in CATALOGUE.values()})


def subject_filter(event_type: str | None) -> str:
    """The subject `events tail --type T` subscribes to: every version of an event (`order.confirmed`), one version
    (`order.confirmed.v1`), or a family (`shipment`). ValueError for a type the catalogue does not know."""
    if not event_type:
        return ALL_EVENTS
    wanted = event_type.strip().removeprefix(f"{SUBJECT_ROOT}.")
    if wanted in CATALOGUE:
        return f"{SUBJECT_ROOT}.{wanted}"
    if wanted in {model.name for model in CATALOGUE.values()}:
        return f"{SUBJECT_ROOT}.{wanted}.*"
    if wanted in families():
        return f"{SUBJECT_ROOT}.{wanted}.>"
    raise ValueError(f"no event type {event_type!r} in the catalogue: give a type such as order.confirmed or "
                     f"order.confirmed.v1, or a family: {', '.join(families())}")


def _summary_value(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def summarise(event: CloudEvent) -> str:
    """The event's data in one short line: its fields but the ids already shown (subject, order)."""
    shown = {event.subject, event.orderid}
    parts = [f"{name}={_summary_value(value)}" for name, value in event.data.items()
             if value is not None and not (isinstance(value, str) and value in shown)]
    text = " ".join(parts)
    return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS - 1] + "…"


@dataclass(frozen=True)
class Seen:
    """One message of `events.>` as `events tail` shows it: the event, or why it is not one."""

    subject: str
    event: CloudEvent | None
    problem: str = ""  # a message on the subjects that is no CloudEvent (the bus refuses none; say so, go on)

    @classmethod
    def of(cls, subject: str, body: bytes) -> Seen:
        try:
            return cls(subject, CloudEvent.model_validate_json(body))
        except ValidationError as error:
            return cls(subject, None, f"not a CloudEvent ({len(body)} bytes): {error.errors()[0]['msg']}")

    def line(self) -> list[str]:
        """The columns of its line: time, type, subject, orderid, summary."""
        if self.event is None:
            return ["-", self.subject.removeprefix(f"{SUBJECT_ROOT}."), "-", "-", self.problem]
        event = self.event
        moment = event.time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return [moment, event.type, event.subject, event.orderid or "-", summarise(event)]

    def json(self) -> str:
        if self.event is None:
            return json.dumps({"subject": self.subject, "error": self.problem})
        return self.event.model_dump_json()


# --- following the bus ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TailPlan:
    subject: str = ALL_EVENTS
    order_id: str | None = None
    count: int | None = None  # stop after this many events shown
    duration_secs: float | None = None  # stop after this long
    from_start: bool = False  # the EVENTS stream from its first message, then live


async def tail(config: BusConfig, plan: TailPlan, show: Callable[[Seen], None],
               on_subscribed: Callable[[], None] | None = None) -> int:
    """Show every event on `plan.subject` (of `plan.order_id` only, when given) until the count or the duration is
    reached, or the caller is cancelled (Ctrl-C); the number shown.

    Live, it is a plain subscription: the events published from now on, as the dashboard's live view sees them.
    `from_start` reads the stream through an ordered consumer (ephemeral, no acks, in stream order) instead, from
    its first message on, and goes on with the live ones."""
    nc = await open_connection(config)
    # Bounded: a terminal slower than the bus leaves the backlog to the client's own pending limit, which drops
    # (and says so) rather than growing without end.
    queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=TAIL_BUFFER)

    async def received(message: Msg) -> None:
        await queue.put(message)

    shown = 0
    try:
        if plan.from_start:
            js = nc.jetstream()
            await js.subscribe(plan.subject, stream=EVENTS_STREAM, cb=received, ordered_consumer=True,
                               deliver_policy=DeliverPolicy.ALL)
        else:
            await nc.subscribe(plan.subject, cb=received)
            await nc.flush()  # the server has the subscription: what is published from now on is seen
        if on_subscribed is not None:
            on_subscribed()
        deadline = None if plan.duration_secs is None else time.monotonic() + plan.duration_secs
        while plan.count is None or shown < plan.count:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                break
            try:
                message = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                break
            seen = Seen.of(message.subject, message.data)
            if plan.order_id is not None and (seen.event is None or seen.event.orderid != plan.order_id):
                continue
            show(seen)
            shown += 1
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return shown


# --- dead letters ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """A message no consumer could apply (shared.bus.Consumer.dead_letter): the original event and why."""

    sequence: int  # in the DEADLETTERS stream: what `--replay` takes
    consumer: str
    subject: str  # the event's own subject, where a replay publishes it again
    stream_sequence: int | None  # the event's sequence in the EVENTS stream
    error: str
    deliveries: int
    at: datetime | None
    body: bytes
    event: CloudEvent | None

    @classmethod
    def of(cls, message: RawStreamMsg) -> DeadLetter:
        headers = message.headers or {}
        body = message.data or b""
        try:
            event: CloudEvent | None = CloudEvent.model_validate_json(body)
        except ValidationError:
            event = None
        stream_sequence = headers.get("CS-Stream-Sequence", "")
        subject = headers.get("CS-Subject") or (event.nats_subject if event is not None else "")
        return cls(sequence=int(message.seq or 0), consumer=headers.get("CS-Consumer", "?"), subject=subject,
                   stream_sequence=int(stream_sequence) if stream_sequence.isdigit() else None,
                   error=headers.get("CS-Error", ""), deliveries=int(headers.get("CS-Deliveries", "0") or 0),
                   at=message.time, body=body, event=event)

    def as_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "consumer": self.consumer, "subject": self.subject,
                "stream_sequence": self.stream_sequence, "error": self.error, "deliveries": self.deliveries,
                "at": self.at.isoformat() if self.at else None,
                "event": self.event.model_dump(mode="json") if self.event else None}


@dataclass(frozen=True)
class DeadLetterPage:
    letters: list[DeadLetter]
    total: int  # in the stream (the page is its oldest `limit`)


# The durable consumers' NATS names -> (package, name), for `--consumer` (a package name may hold underscores).
_DURABLES: dict[str, tuple[str, str]] = {durable_name(package, name): (package, name)
                                         for package, consumers in CONSUMERS.items() for name in consumers}


async def dead_letters(js: JetStreamContext, *, consumer: str | None = None, limit: int = 100) -> DeadLetterPage:
    """The oldest `limit` dead letters (of one consumer, `<package>_<name>`, when given), read one stored message at
    a time by subject (no consumer is made on the stream), and how many the stream holds."""
    subject = f"{DEAD_LETTER_ROOT}.>"
    if consumer is not None:
        if consumer not in _DURABLES:
            raise ValueError(f"no consumer {consumer!r}: one of {', '.join(sorted(_DURABLES))}")
        subject = dead_letter_subject(*_DURABLES[consumer])
    try:
        info = await js.stream_info(DEAD_LETTER_STREAM)
    except nats.js.errors.NotFoundError:
        return DeadLetterPage([], 0)
    total = int(info.state.messages)
    letters: list[DeadLetter] = []
    sequence = int(info.state.first_seq or 1)
    while len(letters) < limit:
        try:
            message = await js.get_msg(DEAD_LETTER_STREAM, seq=sequence, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        letters.append(DeadLetter.of(message))
        sequence = int(message.seq or sequence) + 1
    return DeadLetterPage(letters, total)


@dataclass(frozen=True)
class Replayed:
    letter: DeadLetter
    msg_id: str
    stream_sequence: int  # where the event is in the EVENTS stream now
    deleted: bool


class NotReplayable(Exception):
    """A dead letter that cannot be replayed (gone, or its body is no CloudEvent)."""


def replay_msg_id(event_id: str, sequence: int) -> str:
    # Not the event's own id: JetStream would drop the replay as a duplicate within its window. The event inside is
    # unchanged, so a consumer that applied it once (its inbox holds the event's id) changes nothing.
    return f"{event_id}:replay:{sequence}"


async def replay(js: JetStreamContext, sequence: int) -> Replayed:
    """Publish dead letter `sequence`'s event again on its own subject, then delete the dead letter once JetStream
    has acknowledged the event (a replay that fails leaves the dead letter where it was)."""
    try:
        letter = DeadLetter.of(await js.get_msg(DEAD_LETTER_STREAM, seq=sequence))
    except nats.js.errors.NotFoundError:
        raise NotReplayable(f"no dead letter {sequence} in {DEAD_LETTER_STREAM}") from None
    if letter.event is None:
        raise NotReplayable(f"dead letter {sequence}'s body is not a CloudEvent: nothing to replay")
    subject = letter.subject if letter.subject.startswith(f"{SUBJECT_ROOT}.") else letter.event.nats_subject
    msg_id = replay_msg_id(letter.event.id, sequence)
    ack = await js.publish(subject, letter.body, stream=EVENTS_STREAM, headers={"Nats-Msg-Id": msg_id})
    deleted = await js.delete_msg(DEAD_LETTER_STREAM, sequence)
    return Replayed(letter, msg_id, int(ack.seq), bool(deleted))


T = TypeVar("T")


async def with_jetstream(config: BusConfig, work: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    """Connect, run `work(js)`, close: one short conversation with the bus."""
    nc = await open_connection(config)
    try:
        return await work(nc.jetstream(timeout=5))
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


# --- the catalogue --------------------------------------------------------------------------------------------

CATALOGUE_START = "<!-- events-catalogue:start (customer-service events catalogue --write README.md) -->"
CATALOGUE_END = "<!-- events-catalogue:end -->"


def _matches(filter_subject: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    wanted, tokens = filter_subject.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)


def consumers_of(event_type: str) -> list[str]:
    """Who reacts to an event: each consuming package with the names of its consumers that read the subject."""
    model = CATALOGUE[event_type]
    said = []
    for package in model.consumers:
        names = [name for name, subject in CONSUMERS.get(package, {}).items()
                 if _matches(subject, model.nats_subject())]
        said.append(f"{package} ({', '.join(names)})" if names else package)
    return said


def catalogue_markdown() -> str:
    """The catalogue as a markdown table, one row per event type, in the catalogue's order."""
    rows = ["| type | subject | producer | consumers | version | summary |",
            "|---|---|---|---|---|---|"]
    for event_type, model in CATALOGUE.items():
        consumers = ", ".join(consumers_of(event_type)) or "—"
        summary = model.summary.replace("|", "\\|")
        rows.append(f"| `{event_type}` | `{model.nats_subject()}` | {model.producer} | {consumers} | "
                    f"{model.version} | {summary} |")
    return "\n".join(rows) + "\n"


_EMBEDDED = re.compile(re.escape(CATALOGUE_START) + r"\n(.*?)" + re.escape(CATALOGUE_END), re.DOTALL)


def embedded_catalogue(text: str) -> str | None:
    """The table between the markers of a document (README.md), or None without them."""
    found = _EMBEDDED.search(text)
    return found.group(1) if found else None


def write_catalogue(path: Path) -> bool:
    """Put the generated table between the markers of `path`; True when it changed."""
    text = path.read_text()
    if embedded_catalogue(text) is None:
        raise ValueError(f"{path} has no {CATALOGUE_START} … {CATALOGUE_END} markers")
    updated = _EMBEDDED.sub(lambda _: f"{CATALOGUE_START}\n{catalogue_markdown()}{CATALOGUE_END}", text, count=1)
    if updated != text:
        path.write_text(updated)
    return updated != text
