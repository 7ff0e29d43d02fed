"""sidecar.webhooks.sender: real requests to a real local aiohttp server.

Delays are shrunk (tens of milliseconds) so the suite stays fast; tests wait for what they
expect to see, never for a fixed time, and assert nothing about how long anything took.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pusher
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.config.model import WEBHOOK_KINDS, AppConfig, WebhookConfig, WebhookSettings
from sidecar.webhooks import Webhooks
from tests.support.process import free_port

APP_ID, KEY, SECRET = "3", "278d425bdf160c739803", "7ad3773142a6692b25b8"
FAST = WebhookSettings(
    batch_window=0.02,
    batch_max_events=20,
    vacate_delay=0.15,
    retry_horizon=30.0,
    retry_initial_delay=0.02,
    retry_max_delay=0.1,
    timeout=2.0,
    queue_limit=1000,
)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def events(self) -> list[dict[str, Any]]:
        return json.loads(self.body)["events"]


@dataclass
class Receiver:
    """The app's webhook endpoint. `answer` picks each request's status (or hangs when None)."""

    server: TestServer
    requests: list[Received] = field(default_factory=list)
    answer: Callable[[int], int | None] = lambda n: 200
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hooks") -> str:
        return str(self.server.make_url(path))

    def ok(self, path: str | None = None) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300 and path in (None, r.path)]

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        return [e for r in self.ok(path) for e in r.events]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    holder: list[Receiver] = []

    async def handle(request: web.Request) -> web.Response:
        rec = holder[0]
        body = await request.read()
        status = rec.answer(len(rec.requests))
        if status is None:  # an endpoint that never answers
            await rec.release.wait()
            status = 200
        rec.requests.append(Received(request.path, dict(request.headers), body, status))
        return web.Response(status=status, text="ok")

    app = web.Application()
    app.router.add_post("/{path:.*}", handle)
    server = TestServer(app)
    await server.start_server()
    holder.append(Receiver(server))
    yield holder[0]
    holder[0].release.set()
    await server.close()


def app_with(*hooks: WebhookConfig, app_id: str = APP_ID) -> AppConfig:
    return AppConfig(id=app_id, key=KEY, secret=SECRET, webhooks=hooks)


def hook(url: str, *kinds: str) -> WebhookConfig:
    return WebhookConfig(url, frozenset(kinds or WEBHOOK_KINDS))


Start = Callable[..., Awaitable[Webhooks]]


@pytest.fixture
async def started() -> AsyncIterator[Start]:
    made: list[Webhooks] = []

    async def start(*apps: AppConfig, settings: WebhookSettings = FAST) -> Webhooks:
        hooks = Webhooks(apps, settings)
        await hooks.start()
        made.append(hooks)
        return hooks

    yield start
    for hooks in made:
        await hooks.close(timeout=0)


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    # Polling on purpose: the conditions are about the server's and the sender's state, which
    # have no event to wait on, and a test must not reach into the sender to add one.
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def occupied(channel: str) -> dict[str, str]:
    return {"name": "channel_occupied", "channel": channel}


def vacated(channel: str) -> dict[str, str]:
    return {"name": "channel_vacated", "channel": channel}


# Shape and signature ------------------------------------------------------------------------


async def test_signed_so_the_pusher_library_validates_it(
    receiver: Receiver, started: Start
) -> None:
    hooks = await started(app_with(hook(receiver.url())))
    event = {
        "name": "client_event",
        "channel": "presence-room",
        "event": "client-typing",
        "data": '{"who":"\u00e9lodie"}',
        "socket_id": "123.456",
        "user_id": "u1",
    }
    hooks.emit(APP_ID, event)
    await until(lambda: receiver.ok())
    [request] = receiver.requests
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Pusher-Key"] == KEY
    client = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET)
    validated = client.validate_webhook(
        request.headers["X-Pusher-Key"],
        request.headers["X-Pusher-Signature"],
        request.body.decode(),
    )
    assert validated is not None
    assert validated["events"] == [event]
    assert isinstance(validated["time_ms"], int)
    assert hooks.counters.sent_events == 1
    assert hooks.counters.sent_batches == 1


async def test_events_emitted_together_arrive_in_one_batch(
    receiver: Receiver, started: Start
) -> None:
    hooks = await started(app_with(hook(receiver.url())))
    for i in range(5):
        hooks.emit(APP_ID, occupied(f"c{i}"))
    await until(lambda: len(receiver.events()) == 5)
    assert len(receiver.requests) == 1
    assert receiver.events() == [occupied(f"c{i}") for i in range(5)]


async def test_big_bursts_are_split_at_the_batch_size(receiver: Receiver, started: Start) -> None:

    hooks = await started(
        app_with(hook(receiver.url())), settings=replace(FAST, batch_max_events=2)
    )
    for i in range(5):
        hooks.emit(APP_ID, occupied(f"c{i}"))
    await until(lambda: len(receiver.events()) == 5)
    assert [len(r.events) for r in receiver.requests] == [2, 2, 1]
    assert receiver.events() == [occupied(f"c{i}") for i in range(5)]


# Filtering and holding ----------------------------------------------------------------------


async def test_each_webhook_gets_only_its_kinds(receiver: Receiver, started: Start) -> None:
    hooks = await started(
        app_with(
            hook(receiver.url("/occupancy"), "channel_occupied", "channel_vacated"),
            hook(receiver.url("/clients"), "client_event"),
        )
    )
    client_event = {
        "name": "client_event",
        "channel": "private-a",
        "event": "client-x",
        "data": "{}",
        "socket_id": "1.1",
    }
    hooks.emit(APP_ID, occupied("private-a"))
    hooks.emit(APP_ID, client_event)
    hooks.emit(APP_ID, {"name": "cache_miss", "channel": "cache-a"})  # nobody asked
    await until(lambda: len(receiver.ok()) == 2)
    assert receiver.events("/occupancy") == [occupied("private-a")]
    assert receiver.events("/clients") == [client_event]


async def test_vacate_then_reoccupy_within_the_delay_fires_nothing(
    receiver: Receiver, started: Start
) -> None:
    hooks = await started(app_with(hook(receiver.url())))
    hooks.emit(APP_ID, occupied("c"))
    await until(lambda: receiver.ok())
    # A reload: gone and back at once. Then another channel that really empties.
    hooks.emit(APP_ID, vacated("c"))
    hooks.emit(APP_ID, {"name": "member_removed", "channel": "presence-c", "user_id": "u"})
    hooks.emit(APP_ID, {"name": "member_added", "channel": "presence-c", "user_id": "u"})
    hooks.emit(APP_ID, occupied("c"))
    hooks.emit(APP_ID, vacated("d"))
    # d's vacated falls due after c's would have: once it is here, c's had its chance.
    await until(lambda: vacated("d") in receiver.events())
    assert receiver.events() == [occupied("c"), vacated("d")]


async def test_close_sends_held_events_at_once(receiver: Receiver) -> None:

    hooks = Webhooks([app_with(hook(receiver.url()))], replace(FAST, vacate_delay=3600))
    await hooks.start()
    hooks.emit(APP_ID, vacated("c"))
    await asyncio.wait_for(hooks.close(timeout=5), 10)
    assert receiver.events() == [vacated("c")]
    assert hooks.counters.dropped_events == 0


# Failures -----------------------------------------------------------------------------------


async def test_a_failing_endpoint_gets_each_event_once_in_order(
    receiver: Receiver, started: Start
) -> None:
    receiver.answer = lambda n: 503 if n < 3 else 200
    hooks = await started(app_with(hook(receiver.url())))
    hooks.emit(APP_ID, occupied("first"))
    await until(lambda: len(receiver.requests) >= 1)
    hooks.emit(APP_ID, occupied("second"))  # queued behind the failing batch
    hooks.emit(APP_ID, occupied("third"))
    await until(lambda: len(receiver.events()) == 3)
    assert receiver.events() == [occupied("first"), occupied("second"), occupied("third")]
    failed = [r for r in receiver.requests if r.status == 503]
    assert len(failed) == 3
    # Retries resend the very same signed body.
    assert {r.body for r in failed} == {receiver.ok()[0].body}
    assert {r.headers["X-Pusher-Signature"] for r in failed} == {
        receiver.ok()[0].headers["X-Pusher-Signature"]
    }
    assert hooks.counters.failed_attempts == 3
    # The receiver records a request before its answer reaches the sender, which counts it then.
    await until(lambda: hooks.counters.sent_events == 3)
    assert hooks.counters.dropped_events == 0


async def test_a_redirect_is_not_success(receiver: Receiver, started: Start) -> None:
    receiver.answer = lambda n: 302 if n == 0 else 204
    hooks = await started(app_with(hook(receiver.url())))
    hooks.emit(APP_ID, occupied("c"))
    await until(lambda: receiver.ok())
    assert [r.status for r in receiver.requests] == [302, 204]
    assert hooks.counters.failed_attempts == 1


async def test_given_up_after_the_horizon(receiver: Receiver, started: Start) -> None:

    receiver.answer = lambda n: 500
    settings = replace(FAST, retry_horizon=0.5, retry_initial_delay=0.05, retry_max_delay=0.05)
    hooks = await started(app_with(hook(receiver.url())), settings=settings)
    hooks.emit(APP_ID, occupied("c"))
    await until(lambda: hooks.counters.dropped_expired == 1)
    tries = len(receiver.requests)
    assert tries >= 2
    assert hooks.counters.failed_attempts == tries
    assert hooks.queued == 0


async def test_a_down_endpoint_costs_only_counters(
    started: Start, caplog: pytest.LogCaptureFixture
) -> None:

    caplog.set_level(logging.DEBUG, logger="sidecar.webhooks")
    down = f"http://127.0.0.1:{free_port()}/hooks"  # nothing listens there
    other = f"http://127.0.0.1:{free_port()}/other"
    settings = replace(FAST, queue_limit=50)
    hooks = await started(
        app_with(hook(down, "channel_occupied"), hook(other, "cache_miss")), settings=settings
    )
    tasks_before = len(asyncio.all_tasks())
    for i in range(500):
        hooks.emit(APP_ID, occupied(f"c{i}"))
        hooks.emit(APP_ID, {"name": "cache_miss", "channel": f"c{i}", "data": SECRET + "-data"})
    await until(lambda: hooks.counters.failed_attempts >= 6)
    # At most one request per target in flight, whatever was emitted: a pile would be hundreds
    # (the margin is for whatever aiohttp's connector may run beside them).
    assert len(asyncio.all_tasks()) <= tasks_before + 6
    assert hooks.queued <= 2 * 50
    assert hooks.counters.dropped_full == 2 * (500 - 50)
    assert hooks.counters.sent_events == 0
    await asyncio.wait_for(hooks.close(timeout=0.1), 5)
    assert hooks.counters.dropped_at_close == 2 * 50
    # Logs name the host and attempt, never the secret, a signature or the events.
    logged = [(r.getMessage(), r.__dict__) for r in caplog.records]
    assert any(fields.get("host") == "127.0.0.1" and "attempt" in fields for _, fields in logged)
    text = repr(logged)
    assert SECRET not in text
    assert "c42" not in text
    assert "X-Pusher-Signature" not in text


async def test_an_endpoint_that_never_answers(receiver: Receiver, started: Start) -> None:

    receiver.answer = lambda n: None
    hooks = await started(app_with(hook(receiver.url())), settings=replace(FAST, timeout=0.2))
    for i in range(100):
        hooks.emit(APP_ID, occupied(f"c{i}"))
    await until(lambda: hooks.counters.failed_attempts >= 2)  # timed out, retried, timed out
    assert hooks.counters.sent_events == 0
    for i in range(100, 200):
        hooks.emit(APP_ID, occupied(f"c{i}"))
    assert hooks.queued == 200
    # close() cannot wait for an endpoint that never answers: it gives up on time.
    await asyncio.wait_for(hooks.close(timeout=0.1), 5)
    assert hooks.counters.dropped_at_close == 200
    assert hooks.queued == 0


async def test_big_client_events_to_a_hung_endpoint_are_bounded_in_bytes_and_logged_once(
    receiver: Receiver, started: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sidecar.webhooks")
    receiver.answer = lambda n: None
    settings = replace(FAST, max_queue_bytes=1_000_000)
    hooks = await started(app_with(hook(receiver.url())), settings=settings)
    blob = SECRET + "x" * 60_000
    for n in range(200):  # 12 MB offered
        hooks.emit(APP_ID, {"name": "client_event", "channel": "private-c", "data": blob})
        if n == 100:
            hooks.emit(APP_ID, {"name": "member_added", "channel": "presence-r", "user_id": "u"})
    assert 900_000 < hooks.queued_bytes <= 1_000_000
    assert hooks.counters.dropped_full_by_class == {"client_events": 184}
    await until(lambda: any("queue full" in r.getMessage() for r in caplog.records))
    for _ in range(3):  # more drops within the minute: no more lines
        hooks.emit(APP_ID, {"name": "client_event", "channel": "private-c", "data": blob})
        await asyncio.sleep(0.05)
    [line] = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert (line.dropped, line.classes) == (184, {"client_events": 184})  # type: ignore[attr-defined]
    assert SECRET not in repr(line.__dict__) and "private-c" not in repr(line.__dict__)
    receiver.release.set()  # the endpoint comes back: the member_added was kept
    await until(lambda: any(e["name"] == "member_added" for e in receiver.events()))


# The edges of the API -----------------------------------------------------------------------


async def test_unknown_apps_and_apps_without_webhooks_are_ignored(
    receiver: Receiver, started: Start
) -> None:
    plain = AppConfig(id="4", key="k4", secret="secret-four")
    hooks = await started(app_with(hook(receiver.url())), plain)
    assert hooks.enabled
    hooks.emit("4", occupied("x"))
    hooks.emit("99", occupied("y"))
    hooks.emit(APP_ID, occupied("z"))
    await until(lambda: receiver.ok())
    assert receiver.events() == [occupied("z")]
    assert not Webhooks([plain]).enabled


async def test_events_emitted_before_start_are_sent(receiver: Receiver) -> None:
    hooks = Webhooks([app_with(hook(receiver.url()))], FAST)
    hooks.emit(APP_ID, occupied("early"))
    await hooks.start()
    try:
        await until(lambda: receiver.ok())
        assert receiver.events() == [occupied("early")]
    finally:
        await hooks.close(timeout=1)
    hooks.emit(APP_ID, occupied("late"))  # after close: ignored
    assert hooks.queued == 0


async def test_close_without_start_counts_what_is_left() -> None:
    hooks = Webhooks([app_with(hook("http://127.0.0.1:9/x"))], FAST)
    hooks.emit(APP_ID, occupied("c"))
    await hooks.close(timeout=1)
    assert hooks.counters.dropped_at_close == 1
    await hooks.start()  # too late: stays closed, starts nothing
    hooks.emit(APP_ID, occupied("d"))
    assert hooks.queued == 0


async def test_odd_events_are_ignored_not_raised(receiver: Receiver, started: Start) -> None:
    hooks = await started(app_with(hook(receiver.url())))
    hooks.emit(APP_ID, {})
    hooks.emit(APP_ID, {"name": 5})
    hooks.emit(APP_ID, {"name": ["channel_occupied"]})
    hooks.emit(APP_ID, {"name": "channel_occupied"})  # no channel: passed on as given
    await until(lambda: receiver.ok())
    assert receiver.events() == [{"name": "channel_occupied"}]
