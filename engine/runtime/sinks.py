"""Ready-made event sinks: an HMAC-signed webhook and a logger, and the receivers' check.

Use one as ``Kernel(event_sink=...)``. Both deliver at least once (see
:mod:`engine.runtime.outbox`): receivers should deduplicate on the event ``id``.

Webhook deliveries carry ``X-WFE-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``, the MAC
taken over ``"<t>." + body`` (the scheme of the best-known webhook providers): a receiver
checks it with :func:`verify_webhook`, which also rejects deliveries older than a tolerance,
so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from engine.core.records import OutboxEventRecord
from engine.errors import EngineError
from engine.runtime.outbox import DEFAULT_MAX_RETRIES

__all__ = [
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "LoggingSink",
    "WebhookDeliveryError",
    "WebhookSink",
    "WebhookVerificationError",
    "event_json",
    "sign_webhook",
    "verify_webhook",
]

SIGNATURE_HEADER = "X-WFE-Signature"
"""Header carrying ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + raw body>``."""

DEFAULT_TOLERANCE = timedelta(minutes=5)
"""How far a delivery's timestamp may be from the receiver's clock (either way)."""

_EVENT_FIELDS = {
    "id",
    "workflow_run_id",
    "sequence",
    "event_type",
    "payload",
    "causation_id",
    "occurred_at",
}


def event_json(event: OutboxEventRecord) -> dict[str, Any]:
    """The event as JSON-able data.

    ``id, workflow_run_id, sequence, event_type, payload, causation_id, occurred_at`` (not the
    relay's bookkeeping: ``published_at``, retries).
    """
    return event.model_dump(mode="json", include=_EVENT_FIELDS)


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _mac(secret: str | bytes, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(_key(secret), signed, hashlib.sha256).hexdigest()


def sign_webhook(secret: str | bytes, body: bytes, *, timestamp: int | None = None) -> str:
    """The :data:`SIGNATURE_HEADER` value for ``body`` sent at ``timestamp``.

    ``timestamp`` is in unix seconds, default now. The value reads
    ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>." + body>``.
    """
    moment = int(time.time()) if timestamp is None else timestamp
    return f"t={moment},v1={_mac(secret, moment, body)}"


class WebhookVerificationError(EngineError):
    """A webhook delivery that :func:`verify_webhook` rejects; answer it with 400 or 401."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
        """``missing``, ``malformed``, ``expired`` (outside the tolerance) or ``mismatch``."""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name, or ``None``.

    From any mapping: a dict, Starlette's headers, ``http.server``'s message.
    """
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return value


def verify_webhook(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: timedelta = DEFAULT_TOLERANCE,
    *,
    clock: Callable[[], float] = time.time,
) -> int:
    """Check a delivery of :class:`WebhookSink`: signed with ``secret``, and recent.

    Run it on the raw request body, before parsing it. A delivery whose timestamp is more than
    ``tolerance`` away from ``clock()`` is rejected, so a captured delivery cannot be replayed
    after that; within the tolerance, deduplicate on ``X-WFE-Event-Id`` (deliveries are at
    least once anyway). Several ``v1=`` entries are accepted (any may match), for key rotation.

    Args:
        secret: The secret the sink was given.
        headers: The request headers (any mapping; the name is matched case-insensitively).
        body: The raw request body, exactly as received.
        tolerance: Largest accepted distance between the timestamp and the receiver's clock.
        clock: Current unix time (tests pass a fixed one).

    Returns:
        The delivery's timestamp (unix seconds).

    Raises:
        WebhookVerificationError: no or a malformed header, an expired timestamp, or a
            signature that does not match (wrong secret or altered body).
    """
    header = _header(headers, SIGNATURE_HEADER)
    if not header:
        raise WebhookVerificationError(f"no {SIGNATURE_HEADER} header", reason="missing")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookVerificationError(
            f"{SIGNATURE_HEADER} must be t=<unix seconds>,v1=<hex signature>", reason="malformed"
        )
    age = clock() - timestamp
    if abs(age) > tolerance.total_seconds():
        raise WebhookVerificationError(
            f"webhook timestamp is {abs(int(age))} s {'old' if age > 0 else 'ahead'}, outside "
            f"the tolerance of {int(tolerance.total_seconds())} s (a replay?)",
            reason="expired",
        )
    expected = _mac(secret, timestamp, body)
    matched = False
    for signature in signatures:  # compare every one: the time says nothing about which
        matched |= hmac.compare_digest(expected, signature)
    if not matched:
        raise WebhookVerificationError(
            "webhook signature does not match (wrong secret or altered body)", reason="mismatch"
        )
    return timestamp


class WebhookDeliveryError(EngineError):
    """The webhook answered with a non-2xx status (or not at all); the relay retries."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        """The webhook URL."""
        self.status = status
        """The HTTP status, or ``None`` when there was no answer (timeout, refused)."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects fail the delivery: following one would turn the POST into a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookSink:
    """POSTs each event as JSON, signed with a timestamp in ``X-WFE-Signature``.

    The body is :func:`event_json` of the event (UTF-8 JSON); headers also carry the event id
    (``X-WFE-Event-Id``, for deduplication) and type (``X-WFE-Event-Type``). Any answer other
    than 2xx (redirects included), a timeout or a connection error raises
    :class:`WebhookDeliveryError`, so the relay retries and, after ``max_retries``,
    dead-letters the event. Uses the standard library (``urllib`` in a thread).

    Args:
        url: ``http://`` or ``https://`` endpoint.
        secret: HMAC key shared with the receiver (check with :func:`verify_webhook`).
        timeout: Limit on the whole request.
        max_retries: Failed deliveries of an event before it is dead-lettered.
        headers: Extra request headers (an ``Authorization``, say).

    Raises:
        ValueError: ``url`` is not http(s), or ``secret`` is empty.
    """

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        timeout: timedelta = timedelta(seconds=5),
        max_retries: int = DEFAULT_MAX_RETRIES,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"webhook URL must be http(s)://host/..., got {url!r}")
        if not secret:
            raise ValueError("webhook secret must not be empty")
        self.url = url
        """The endpoint."""
        self.timeout = timeout
        """Limit on each request."""
        self.max_retries = max_retries
        """Failed deliveries of an event before it is dead-lettered."""
        self._secret = _key(secret)
        self._headers = dict(headers or {})
        self._opener = urllib.request.build_opener(_NoRedirects())

    async def publish(self, event: OutboxEventRecord) -> None:
        """POST the event; raises :class:`WebhookDeliveryError` unless the answer is 2xx."""
        body = json.dumps(event_json(event), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "User-Agent": "workflow-engine-temporal",
            # Signed at each attempt: a retry an hour later carries a fresh timestamp.
            SIGNATURE_HEADER: sign_webhook(self._secret, body),
            "X-WFE-Event-Id": event.id,
            "X-WFE-Event-Type": event.event_type,
        }
        seconds = self.timeout.total_seconds()
        try:
            await asyncio.wait_for(asyncio.to_thread(self._post, body, headers), seconds)
        except TimeoutError:
            raise WebhookDeliveryError(
                f"webhook {self.url} did not answer within {self.timeout}", url=self.url
            ) from None

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout.total_seconds()) as response:
                response.read()
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise WebhookDeliveryError(
                f"webhook {self.url} answered {exc.code} {exc.reason}",
                url=self.url,
                status=exc.code,
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise WebhookDeliveryError(
                f"webhook {self.url} unreachable: {reason}", url=self.url
            ) from exc
        if not 200 <= status < 300:
            raise WebhookDeliveryError(
                f"webhook {self.url} answered {status}", url=self.url, status=status
            )


class LoggingSink:
    """Logs each event: one line, with the event as ``extra={"wfe_event": {...}}``.

    Args:
        logger: Where to log (default: the ``engine.events`` logger).
        level: Log level of the lines.
    """

    max_retries = DEFAULT_MAX_RETRIES
    """Failed deliveries before dead-lettering (logging does not fail in practice)."""

    def __init__(self, logger: logging.Logger | None = None, *, level: int = logging.INFO) -> None:
        self.logger = logger or logging.getLogger("engine.events")
        """The logger events go to."""
        self.level = level
        """Their level."""

    async def publish(self, event: OutboxEventRecord) -> None:
        """Log the event."""
        self.logger.log(
            self.level,
            "event %s run %s #%d %s",
            event.event_type,
            event.workflow_run_id,
            event.sequence,
            event.id,
            extra={"wfe_event": event_json(event)},
        )
