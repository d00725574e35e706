"""Webhook signatures against a real receiver on 127.0.0.1 that checks each delivery with
``verify_webhook``: a fresh delivery passes; a replay after the tolerance, a tampered body, a
wrong secret, a missing or malformed header, a timestamp from the future are all rejected."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.core.records import OutboxEventRecord
from engine.runtime.sinks import (
    SIGNATURE_HEADER,
    WebhookDeliveryError,
    WebhookSink,
    WebhookVerificationError,
    sign_webhook,
    verify_webhook,
)
from engine.store.models import utcnow

SECRET = "whsec-test-5b1d"
TOLERANCE = timedelta(seconds=2)


@dataclass
class Receiver:
    """What the receiver accepted and rejected (with the reason), and the raw deliveries."""

    url: str = ""
    accepted: list[bytes] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.raw.append((dict(self.headers.items()), body))
            try:
                verify_webhook(SECRET, self.headers, body, tolerance=TOLERANCE)
            except WebhookVerificationError as exc:
                state.rejected.append(exc.reason)
                self.send_response(400)
            else:
                state.accepted.append(body)
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _post(url: str, headers: dict[str, str], body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def _event() -> OutboxEventRecord:
    return OutboxEventRecord(
        id="evt-1",
        workflow_run_id="run-1",
        sequence=1,
        event_type="annotation:created",
        payload={"key": "approval.approvers", "value": ["alice"]},
        causation_id="c",
        occurred_at=utcnow(),
    )


async def test_receiver_accepts_a_fresh_delivery_and_rejects_replay_and_tampering(
    receiver: Receiver,
) -> None:
    event = _event()
    await WebhookSink(receiver.url, SECRET).publish(event)
    assert len(receiver.accepted) == 1 and receiver.rejected == []
    ((headers, body),) = receiver.raw
    captured = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: next(v for k, v in headers.items() if k.lower() == "x-wfe-signature"),
    }

    tampered = body.replace(b'"alice"', b'"mallory"')
    assert tampered != body
    assert _post(receiver.url, captured, tampered) == 400

    wrong_key = {**captured, SIGNATURE_HEADER: sign_webhook("not-the-secret", body)}
    assert _post(receiver.url, wrong_key, body) == 400
    assert _post(receiver.url, {"Content-Type": "application/json"}, body) == 400
    malformed = {**captured, SIGNATURE_HEADER: "sha256=" + "0" * 64}  # the old format
    assert _post(receiver.url, malformed, body) == 400
    future = {
        **captured,
        SIGNATURE_HEADER: sign_webhook(SECRET, body, timestamp=int(time.time()) + 60),
    }
    assert _post(receiver.url, future, body) == 400

    time.sleep(TOLERANCE.total_seconds() + 1.1)  # the captured delivery is now stale
    assert _post(receiver.url, captured, body) == 400  # a replay
    assert receiver.rejected == [
        "mismatch",
        "mismatch",
        "missing",
        "malformed",
        "expired",
        "expired",
    ]

    # A retry of the sink is signed afresh, so it still passes after the tolerance.
    await WebhookSink(receiver.url, SECRET).publish(event)
    assert receiver.accepted == [body, body]


def test_verify_webhook_rules_without_a_network() -> None:
    body = b'{"id":"evt-1"}'
    now = 1_800_000_000
    header = sign_webhook(SECRET, body, timestamp=now)
    assert verify_webhook(SECRET, {"x-wfe-signature": header}, body, clock=lambda: now + 299) == now
    with pytest.raises(WebhookVerificationError, match="outside the tolerance") as old:
        verify_webhook(SECRET, {SIGNATURE_HEADER: header}, body, clock=lambda: now + 301)
    assert old.value.reason == "expired"
    # Key rotation: several v1 entries, any may match.
    rotated = f"{header},v1={sign_webhook('older-secret', body, timestamp=now).split('v1=')[1]}"
    assert verify_webhook("older-secret", {SIGNATURE_HEADER: rotated}, body, clock=lambda: now)
    for bad in ("", "t=,v1=ab", "t=abc,v1=ab", f"t={now}", "v1=ab", f"t={'9' * 40},v1=ab"):
        with pytest.raises(WebhookVerificationError) as refused:
            verify_webhook(SECRET, {SIGNATURE_HEADER: bad}, body, clock=lambda: now)
        assert refused.value.reason in ("missing", "malformed")


async def test_a_receiver_that_rejects_makes_the_sink_retry(receiver: Receiver) -> None:
    with pytest.raises(WebhookDeliveryError, match="answered 400"):
        await WebhookSink(receiver.url, "a-different-secret").publish(_event())
    assert receiver.rejected == ["mismatch"]
