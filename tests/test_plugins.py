"""Plugins and the shipped sinks: subscriptions (B48), per-plugin retries, webhook, logging.

The relay runs through ``kernel.dispatch(OutboxFlush())`` on both backends; events are written
with the store's ``append_events`` (no workflow needed). The webhook talks to a real HTTP
server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from engine import (
    Kernel,
    OutboxEventRecord,
    OutboxFlush,
    Plugin,
    PluginReplayDLQ,
    PluginRunner,
    define_plugin,
)
from engine.runtime.plugins import PluginDeliveryError
from engine.runtime.sinks import (
    SIGNATURE_HEADER,
    LoggingSink,
    WebhookDeliveryError,
    WebhookSink,
    WebhookVerificationError,
    event_json,
    verify_webhook,
)
from engine.store import SqlStore
from engine.store.models import PluginDelivery, utcnow
from tests.helpers import run_with_events

EVENT_TYPES = ["stage:started", "stage:completed", "annotation:created", "workflow:completed"]


async def make_run(store: SqlStore, types: list[str]) -> str:
    """A run whose outbox holds ``workflow:created`` then one event of each of ``types``."""
    return await run_with_events(store, [(t, {"stage_id": "s"}) for t in types])


def kernel_for(env: Any, store: SqlStore, **options: Any) -> Kernel:
    return Kernel(client=env.client, store=store, task_queue=f"tq-{uuid.uuid4()}", **options)


class Recorder:
    """Plugin handlers that record (plugin id, event type, sequence) and fail on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.failing: dict[str, int] = {}
        """Plugin id → how many more calls of it raise."""

    def plugin(self, plugin_id: str, on: list[str]) -> Plugin:
        async def handle(event: OutboxEventRecord) -> None:
            self.calls.append((plugin_id, event.event_type, event.sequence))
            if self.failing.get(plugin_id, 0) > 0:
                self.failing[plugin_id] -= 1
                raise RuntimeError(f"{plugin_id} is down")

        return define_plugin(id=plugin_id, name=plugin_id.title(), on=on, handle=handle)

    def count(self, plugin_id: str) -> int:
        return sum(1 for p, _, _ in self.calls if p == plugin_id)


async def deliveries(store: SqlStore) -> set[tuple[str, str]]:
    async with store.sessions() as session:
        rows = await session.execute(select(PluginDelivery.event_id, PluginDelivery.plugin_id))
        return {(e, p) for e, p in rows.all()}


def test_define_plugin_checks_its_arguments() -> None:
    async def handle(event: OutboxEventRecord) -> None:
        return None

    plugin = define_plugin(id="audit", name="Audit", on=["stage:failed"], handle=handle)
    assert plugin.on == frozenset({"stage:failed"})
    assert plugin.subscribes_to("stage:failed") and not plugin.subscribes_to("stage:completed")
    with pytest.raises(ValueError, match="at least one event type"):
        define_plugin(id="audit", name="Audit", on=[], handle=handle)
    with pytest.raises(TypeError, match="list of event types"):
        define_plugin(id="audit", name="Audit", on="stage:failed", handle=handle)
    with pytest.raises(ValueError, match="plugin id"):
        define_plugin(id="", name="Audit", on=["stage:failed"], handle=handle)
    with pytest.raises(TypeError, match="async function"):
        define_plugin(id="audit", name="Audit", on=["stage:failed"], handle=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="registered twice"):
        PluginRunner([plugin, plugin])
    with pytest.raises(ValueError, match="max_retries"):
        PluginRunner([plugin], max_retries=0)


async def test_kernel_takes_plugins_or_an_event_sink(env, store) -> None:
    recorder = Recorder()
    plugin = recorder.plugin("audit", ["stage:failed"])
    kernel = kernel_for(env, store, plugins=[plugin])
    assert isinstance(kernel.event_sink, PluginRunner)
    assert kernel.event_sink.plugins == (plugin,) and kernel.event_sink.store is store
    assert kernel.event_sink.max_retries == 3
    with pytest.raises(ValueError, match="not both"):
        kernel_for(env, store, plugins=[plugin], event_sink=LoggingSink())


async def test_plugins_get_only_their_subscribed_event_types(env, store) -> None:
    """B48, through the relay."""
    recorder = Recorder()
    plugins = [
        recorder.plugin("stages", ["stage:started", "stage:completed"]),
        recorder.plugin("annotations", ["annotation:created"]),
        recorder.plugin("nothing", ["workflow:cancelled"]),
    ]
    run_id = await make_run(store, EVENT_TYPES)
    kernel = kernel_for(env, store, plugins=plugins)

    assert (await kernel.dispatch(OutboxFlush())).published == 5  # unsubscribed ones too
    assert recorder.calls == [
        ("stages", "stage:started", 2),
        ("stages", "stage:completed", 3),
        ("annotations", "annotation:created", 4),
    ]
    events = await kernel.list_outbox_events(run_id)
    assert all(e.published_at is not None for e in events)
    assert await deliveries(store) == {
        (events[1].id, "stages"),
        (events[2].id, "stages"),
        (events[3].id, "annotations"),
    }


async def test_a_retry_goes_only_to_the_plugins_that_failed(env, store) -> None:
    """The original re-invoked every plugin on a retry; deliveries are now tracked per plugin,
    in SQL, so they survive a new runner (a restarted worker) and a dead-letter replay."""
    recorder = Recorder()

    def plugins() -> list[Plugin]:
        return [
            recorder.plugin("first", ["stage:completed", "workflow:completed"]),
            recorder.plugin("flaky", ["stage:completed", "workflow:completed"]),
            recorder.plugin("last", ["stage:completed"]),
        ]

    run_id = await make_run(store, ["stage:completed", "workflow:completed"])
    recorder.failing["flaky"] = 1
    assert (await kernel_for(env, store, plugins=plugins()).dispatch(OutboxFlush())).published == 1
    # The failing plugin did not keep "last" from the event; the run's next event waits.
    assert recorder.calls == [
        ("first", "stage:completed", 2),
        ("flaky", "stage:completed", 2),
        ("last", "stage:completed", 2),
    ]
    events = await kernel_for(env, store).list_outbox_events(run_id)
    assert [e.retry_count for e in events] == [0, 1, 0]
    assert await deliveries(store) == {(events[1].id, "first"), (events[1].id, "last")}

    # A new kernel (a restarted worker): only "flaky" gets event #2, then all get #3.
    kernel = kernel_for(env, store, plugins=plugins())
    assert (await kernel.dispatch(OutboxFlush())).published == 2
    assert recorder.calls[3:] == [
        ("flaky", "stage:completed", 2),
        ("first", "workflow:completed", 3),
        ("flaky", "workflow:completed", 3),
    ]
    assert Counter(p for p, _, _ in recorder.calls) == {"first": 2, "flaky": 3, "last": 1}

    # Dead-lettered after max_retries, then replayed: still only the plugin that failed.
    run_id = await make_run(store, ["stage:completed"])
    recorder.failing["flaky"] = 3
    published = [(await kernel.dispatch(OutboxFlush())).published for _ in range(3)]
    assert published == [1, 0, 0]  # workflow:created, then #2 fails three times
    event = (await kernel.list_outbox_events(run_id))[1]
    assert event.retry_count == 3 and event.dlq_at is not None
    assert (recorder.count("first"), recorder.count("flaky"), recorder.count("last")) == (3, 6, 2)
    assert (await kernel.dispatch(PluginReplayDLQ())).replayed == 1
    assert (await kernel.dispatch(OutboxFlush())).published == 1
    assert recorder.calls[-1] == ("flaky", "stage:completed", 2)
    assert (recorder.count("first"), recorder.count("flaky"), recorder.count("last")) == (3, 7, 2)


class WorkerDied(BaseException):
    """Stands in for the process dying in the middle of a flush (not an ``Exception``)."""


async def test_deliveries_survive_a_relay_that_dies_mid_event(env, store) -> None:
    """Each success is committed on its own, so the relay's rolled-back transaction (the
    event stays unpublished) does not make the next relay call that plugin again."""
    calls: list[str] = []

    async def fine(event: OutboxEventRecord) -> None:
        calls.append("fine")

    async def dies(event: OutboxEventRecord) -> None:
        calls.append("dies")
        if calls.count("dies") == 1:
            raise WorkerDied()

    plugins = [
        define_plugin(id="fine", name="Fine", on=["stage:completed"], handle=fine),
        define_plugin(id="dies", name="Dies", on=["stage:completed"], handle=dies),
    ]
    run_id = await make_run(store, ["stage:completed"])
    kernel = kernel_for(env, store, plugins=plugins)
    with pytest.raises(WorkerDied):
        await kernel.dispatch(OutboxFlush())
    events = await kernel.list_outbox_events(run_id)
    assert all(e.published_at is None and e.retry_count == 0 for e in events)
    assert await deliveries(store) == {(events[1].id, "fine")}

    assert (await kernel.dispatch(OutboxFlush())).published == 2
    assert calls == ["fine", "dies", "dies"]


async def test_a_runner_without_a_store_remembers_deliveries_in_memory() -> None:
    recorder = Recorder()
    runner = PluginRunner(
        [recorder.plugin("a", ["stage:failed"]), recorder.plugin("b", ["stage:failed"])],
        max_retries=5,
    )
    assert runner.max_retries == 5 and runner.store is None
    event = OutboxEventRecord(
        id="evt-1",
        workflow_run_id="run-1",
        sequence=4,
        event_type="stage:failed",
        payload={"stage_id": "s", "error": "boom"},
        causation_id="c",
        occurred_at=utcnow(),
    )
    recorder.failing["a"] = 1
    with pytest.raises(PluginDeliveryError, match="plugins failed on event evt-1") as failed:
        await runner.publish(event)
    assert list(failed.value.failures) == ["a"]
    assert failed.value.event_id == "evt-1" and failed.value.workflow_run_id == "run-1"
    assert isinstance(failed.value.__cause__, RuntimeError)
    await runner.publish(event)
    assert recorder.calls == [("a", "stage:failed", 4), ("b", "stage:failed", 4)] + [
        ("a", "stage:failed", 4)
    ]
    await runner.publish(event.model_copy(update={"event_type": "stage:completed"}))
    assert len(recorder.calls) == 3


# -- webhook ----------------------------------------------------------------------------------


@dataclass
class Receiver:
    """What the local webhook endpoint got, and the statuses it answers with."""

    url: str
    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            # Header names are case-insensitive (urllib sends "X-wfe-signature").
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.requests.append((self.path, headers, body))
            if self.path == "/slow":
                time.sleep(0.5)
            if self.path == "/moved":
                self.send_response(307)
                self.send_header("Location", "/hook")
            else:
                self.send_response(state.statuses.pop(0) if state.statuses else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_webhook_posts_signed_events_and_non_2xx_is_retried(env, store, receiver) -> None:
    secret = "s3cret"
    run_id = await make_run(store, ["stage:completed"])
    receiver.statuses = [500]  # the first delivery fails, the retry gets 204
    kernel = kernel_for(env, store, event_sink=WebhookSink(f"{receiver.url}/hook", secret))

    assert (await kernel.dispatch(OutboxFlush())).published == 0
    events = await kernel.list_outbox_events(run_id)
    assert [e.retry_count for e in events] == [1, 0]
    assert len(receiver.requests) == 1  # #2 waited behind #1

    assert (await kernel.dispatch(OutboxFlush())).published == 2
    assert [path for path, _, _ in receiver.requests] == ["/hook"] * 3
    events = await kernel.list_outbox_events(run_id)
    for (_, headers, body), event in zip(receiver.requests[1:], events, strict=True):
        header = headers[SIGNATURE_HEADER.lower()]
        stamp = header.split(",")[0].removeprefix("t=")
        signed = stamp.encode() + b"." + body
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        assert header == f"t={stamp},v1={expected}"
        assert abs(int(stamp) - time.time()) < 60
        assert verify_webhook(secret, headers, body) == int(stamp)
        for key, sent_body in (("other", body), (secret, body + b" ")):
            with pytest.raises(WebhookVerificationError):
                verify_webhook(key, headers, sent_body)
        assert headers["content-type"] == "application/json"
        assert headers["x-wfe-event-id"] == event.id
        assert headers["x-wfe-event-type"] == event.event_type
        sent = json.loads(body)
        assert sent == event_json(event)
        assert sent["workflow_run_id"] == run_id and sent["payload"]["type"] == event.event_type
        assert "published_at" not in sent and "retry_count" not in sent
    assert receiver.requests[0][2] == receiver.requests[1][2]  # a retry sends the same bytes


async def test_webhook_failures_raise_delivery_errors(receiver) -> None:
    event = OutboxEventRecord(
        id="evt-1",
        workflow_run_id="run-1",
        sequence=1,
        event_type="workflow:created",
        payload={"type": "workflow:created"},
        causation_id="c",
        occurred_at=utcnow(),
    )
    receiver.statuses = [404]
    with pytest.raises(WebhookDeliveryError, match="answered 404") as not_found:
        await WebhookSink(f"{receiver.url}/hook", b"key").publish(event)
    assert not_found.value.status == 404
    with pytest.raises(WebhookDeliveryError, match="answered 307"):
        await WebhookSink(f"{receiver.url}/moved", "key").publish(event)
    assert [path for path, _, _ in receiver.requests] == ["/hook", "/moved"]  # not followed
    slow = WebhookSink(f"{receiver.url}/slow", "key", timeout=timedelta(milliseconds=100))
    with pytest.raises(WebhookDeliveryError) as timed_out:
        await slow.publish(event)
    assert timed_out.value.status is None
    with pytest.raises(WebhookDeliveryError, match="unreachable"):
        await WebhookSink("http://127.0.0.1:1/hook", "key").publish(event)
    with pytest.raises(ValueError, match="http"):
        WebhookSink("file:///etc/passwd", "key")
    with pytest.raises(ValueError, match="secret"):
        WebhookSink(f"{receiver.url}/hook", "")


async def test_logging_sink_logs_each_event(env, store, caplog) -> None:
    run_id = await make_run(store, ["stage:completed"])
    logger = logging.getLogger("tests.events")
    kernel = kernel_for(env, store, event_sink=LoggingSink(logger))
    with caplog.at_level(logging.INFO, logger="tests.events"):
        assert (await kernel.dispatch(OutboxFlush())).published == 2
    lines = [r for r in caplog.records if r.name == "tests.events"]
    assert [r.getMessage().split()[1] for r in lines] == ["workflow:created", "stage:completed"]
    assert all(run_id in r.getMessage() for r in lines)
    assert lines[1].wfe_event["sequence"] == 2  # type: ignore[attr-defined]
    assert LoggingSink().logger.name == "engine.events"
