r"""Who may call the HTTP API: named tokens, the principals they stand for, and their rights.

The server is configured with named tokens (``WFE_API_TOKENS=alice:TOKEN:read+write,...``, or
a file of such lines via ``WFE_API_TOKENS_FILE``). A request presents one as
``Authorization: Bearer TOKEN`` (or, for the viewer in a browser, as the password of HTTP
Basic auth on reads) and acts as that token's :class:`Principal`, with its :class:`Right`\ s.

Modes (:class:`AccessPolicy`):

- **tokens configured**: every route, reads included, needs a token; 401 without a valid one,
  403 when its principal lacks the route's right;
- **no token, loopback only** (the dev default): reads need none, writes are refused (403);
  the server refuses to listen beyond loopback in this mode;
- **public reads** (``--public-read``): reads need none on any interface; writes still need a
  token with the ``write`` right.

Routes declare what they need with :func:`require` (a FastAPI dependency that returns the
caller's principal), e.g. ``principal: Annotated[Principal, Depends(require(Right.APPROVE))]``.
Tokens are compared in constant time (every configured token is compared, on SHA-256 digests
of equal length), and never logged nor shown in ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.core.annotations import Actor

__all__ = [
    "ACTOR_KIND",
    "API_TOKENS_ENV",
    "API_TOKENS_FILE_ENV",
    "API_TOKEN_ENV",
    "DEFAULT_RIGHTS",
    "LEGACY_PRINCIPAL",
    "AccessPolicy",
    "AuthError",
    "Principal",
    "Right",
    "TokenConfigError",
    "TokenSet",
    "is_loopback",
    "require",
    "tokens_from_env",
]

API_TOKENS_ENV = "WFE_API_TOKENS"
"""Named tokens: ``NAME:TOKEN[:RIGHTS]`` entries separated by commas."""
API_TOKENS_FILE_ENV = "WFE_API_TOKENS_FILE"
"""A file of ``NAME:TOKEN[:RIGHTS]`` lines (``#`` comments), e.g. a Docker secret."""
API_TOKEN_ENV = "WFE_API_TOKEN"
"""The older single token: the principal :data:`LEGACY_PRINCIPAL` with read and write."""
LEGACY_PRINCIPAL = "api"
ACTOR_KIND = "principal"
"""``actor_kind`` of annotations written through the API: the writer is the token's principal."""


class Right(StrEnum):
    """What a principal may do."""

    READ = "read"
    """Every GET: runs, stages, logs, events, annotations, the viewer."""
    WRITE = "write"
    """Create, cancel and rerun runs; attach annotations."""
    APPROVE = "approve"
    """Record approvals: attach ``approval.*`` annotations (and approval endpoints)."""


DEFAULT_RIGHTS = frozenset({Right.READ, Right.WRITE})
"""Rights of a token configured without any: approving must be granted explicitly."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: what a header carries


class TokenConfigError(ValueError):
    """A token configuration that cannot be used (the message never contains a token)."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts as."""

    name: str
    """The token's name (``alice``, ``ci``); the actor id of what it writes."""
    rights: frozenset[Right]
    authenticated: bool = True
    """``False`` for the anonymous caller of an open (no-token or public-read) server."""

    def can(self, right: Right) -> bool:
        """Whether the principal holds ``right``."""
        return right in self.rights

    @property
    def actor(self) -> Actor:
        """The annotation actor of the principal's writes."""
        return Actor(kind=ACTOR_KIND, id=self.name)


ANONYMOUS = Principal(name="anonymous", rights=frozenset({Right.READ}), authenticated=False)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenSet:
    """The configured tokens. Its ``repr`` names the principals, never a token."""

    _entries: tuple[tuple[bytes, Principal], ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, tokens: Mapping[str, Principal]) -> TokenSet:
        """Tokens mapped to their principals.

        Raises:
            TokenConfigError: an empty token or one with spaces or non-ASCII characters.
        """
        entries = []
        for token, principal in tokens.items():
            if not _TOKEN.fullmatch(token):
                raise TokenConfigError(
                    f"token of {principal.name!r} must be printable ASCII without spaces"
                )
            entries.append((_digest(token), principal))
        return cls(tuple(entries))

    @classmethod
    def parse(cls, entries: Iterable[str], *, where: str) -> TokenSet:
        """The tokens of ``NAME:TOKEN[:RIGHTS]`` entries (``where`` names their source in errors).

        RIGHTS is ``read``, ``write``, ``approve`` joined by ``+`` (default ``read+write``).

        Raises:
            TokenConfigError: a malformed entry, an unknown right, or a repeated name or token.
        """
        tokens: dict[str, Principal] = {}
        names: set[str] = set()
        for number, raw in enumerate(entries, 1):
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            name, _, rest = entry.partition(":")
            name = name.strip()
            if not _NAME.fullmatch(name):
                raise TokenConfigError(
                    f"{where} entry {number}: the name must be 1-64 letters, digits or "
                    f"'_.@-' (NAME:TOKEN[:RIGHTS]), got {name[:64]!r}"
                )
            token, _, rights_text = rest.partition(":")
            token = token.strip()
            if not token:
                raise TokenConfigError(f"{where} entry {number} ({name}): the token is empty")
            rights = _parse_rights(rights_text, where=f"{where} entry {number} ({name})")
            if name in names:
                raise TokenConfigError(f"{where}: the name {name!r} is given twice")
            if token in tokens:
                raise TokenConfigError(
                    f"{where}: {name!r} has the same token as {tokens[token].name!r}"
                )
            names.add(name)
            tokens[token] = Principal(name=name, rights=rights)
        return cls.of(tokens)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __or__(self, other: TokenSet) -> TokenSet:
        names = {p.name: p for _, p in self._entries}
        digests = {digest: p for digest, p in self._entries}
        for digest, principal in other._entries:
            if principal.name in names:
                raise TokenConfigError(f"the name {principal.name!r} is given twice")
            if digest in digests:
                raise TokenConfigError(
                    f"{principal.name!r} has the same token as {digests[digest].name!r}"
                )
        return TokenSet(self._entries + other._entries)

    @property
    def principals(self) -> list[Principal]:
        """The configured principals, in configuration order."""
        return [principal for _, principal in self._entries]

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or ``None``.

        Every configured token is compared, each with :func:`hmac.compare_digest` on SHA-256
        digests, so the time taken says nothing about which token or how much of it matched.
        """
        given = _digest(token)
        found: Principal | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(digest, given):
                found = principal
        return found


def _parse_rights(text: str, *, where: str) -> frozenset[Right]:
    text = text.strip()
    if not text:
        return DEFAULT_RIGHTS
    rights = set()
    for word in text.split("+"):
        try:
            rights.add(Right(word.strip().lower()))
        except ValueError:
            known = ", ".join(r.value for r in Right)
            raise TokenConfigError(
                f"{where}: unknown right {word.strip()!r} (known: {known})"
            ) from None
    return frozenset(rights)


def tokens_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    tokens: str | None = None,
    tokens_file: str | Path | None = None,
    legacy_token: str | None = None,
) -> TokenSet:
    """The configured tokens, from all three sources together.

    ``WFE_API_TOKENS``, ``WFE_API_TOKENS_FILE`` and the older ``WFE_API_TOKEN`` (explicit
    arguments win over the environment).

    Raises:
        TokenConfigError: a malformed entry, a missing file, or a name given twice.
    """
    env = os.environ if environ is None else environ
    spec = tokens if tokens is not None else env.get(API_TOKENS_ENV, "")
    path = tokens_file if tokens_file is not None else env.get(API_TOKENS_FILE_ENV) or None
    legacy = legacy_token if legacy_token is not None else env.get(API_TOKEN_ENV, "")
    result = TokenSet.parse(spec.split(","), where=API_TOKENS_ENV)
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise TokenConfigError(
                f"cannot read the tokens file {str(path)!r}: {exc.strerror}"
            ) from None
        result = result | TokenSet.parse(lines, where=str(path))
    if legacy:
        single = {legacy.strip(): Principal(name=LEGACY_PRINCIPAL, rights=DEFAULT_RIGHTS)}
        result = result | TokenSet.of(single)
    return result


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is the loopback interface."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthError(Exception):
    """A refused request: 401 (no or unknown token) or 403 (missing right)."""

    def __init__(self, status: int, error: str, message: str, *, challenge: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.challenge = challenge
        """The ``WWW-Authenticate`` value of a 401."""


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class AccessPolicy:
    """How requests are authenticated; built once per app."""

    tokens: TokenSet = field(default_factory=TokenSet)
    public_read: bool = False
    """Reads need no token (explicit ``--public-read``)."""

    @property
    def open_reads(self) -> bool:
        """Reads need no token: public-read, or the dev default (no token configured)."""
        return self.public_read or not self.tokens

    def describe(self) -> str:
        """One line for the start-up banner (names principals, never tokens)."""
        if not self.tokens:
            if self.public_read:
                return "public reads, writes disabled (no API token configured)"
            return "no API token: reads open to this machine only, writes disabled"
        names = ", ".join(
            f"{p.name}({'+'.join(sorted(r.value for r in p.rights))})"
            for p in self.tokens.principals
        )
        reads = "reads open (--public-read)" if self.public_read else "every route needs a token"
        return f"{reads}; tokens: {names}"

    def authenticate(self, request: Request, right: Right) -> Principal:
        """The principal a request acts as, if it may use a route needing ``right``.

        Raises:
            AuthError: 401 without a valid token where one is needed, 403 without the right.
        """
        browser = not request.url.path.startswith("/api")
        challenge = 'Basic realm="wfe", charset="UTF-8"' if browser else "Bearer"
        # Without configured tokens a presented one means nothing: the caller is anonymous.
        token = self._presented(request) if self.tokens else None
        if token is None:
            if right is Right.READ and self.open_reads:
                if not self.tokens and not self.public_read:
                    _check_local(request)
                return ANONYMOUS
            if not self.tokens:
                raise AuthError(
                    403,
                    "writes_disabled",
                    "write endpoints are disabled: start the server with API tokens "
                    f"({API_TOKENS_ENV} or {API_TOKENS_FILE_ENV})",
                    challenge=None,
                )
            raise AuthError(
                401,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer <token>)",
                challenge=challenge,
            )
        principal = self.tokens.authenticate(token)
        if principal is None:
            raise AuthError(
                401,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer <token>)",
                challenge=challenge,
            )
        if not principal.can(right):
            raise AuthError(
                403,
                "forbidden",
                f"the token of {principal.name!r} lacks the {right.value!r} right",
                challenge=None,
            )
        return principal

    @staticmethod
    def _presented(request: Request) -> str | None:
        """The token a request carries: Bearer on any route; HTTP Basic's password on reads only.

        Browsers resend Basic credentials by themselves, and a cross-site form must not be able to
        write with them.
        """
        header = request.headers.get("authorization")
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            return value
        if scheme.lower() == "basic" and value and request.method in _SAFE_METHODS:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return ""
            return decoded.partition(":")[2]
        return ""  # some other scheme: a credential, but never a valid one


def _check_local(request: Request) -> None:
    """Without tokens, answer only requests addressed to this machine by name.

    A page on another site can make a browser's DNS resolve its own name to 127.0.0.1 (DNS
    rebinding) and then read this server as same-origin; such requests carry that site's name
    in ``Host``, so they are refused here.
    """
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not is_loopback(name):
        raise AuthError(
            403,
            "not_local",
            f"this server has no API token and answers requests to localhost only, not "
            f"Host {host[:100]!r} (configure {API_TOKENS_ENV} or start with --public-read)",
            challenge=None,
        )


# Declares the scheme in the OpenAPI document of every route using :func:`require`; the
# header itself is read by AccessPolicy (Basic too, for browsers).
_bearer = HTTPBearer(
    auto_error=False, description=f"A token of {API_TOKENS_ENV} (or {API_TOKEN_ENV})."
)


def require(right: Right) -> Callable[..., Principal]:
    """A FastAPI dependency admitting callers holding ``right`` and returning their principal.

    Example::

        @router.post("/runs/{run_id}/approvals")
        async def approve(principal: Annotated[Principal, Depends(require(Right.APPROVE))]):
            ...
    """

    def dependency(
        request: Request,
        _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        policy: AccessPolicy = request.app.state.wfe_access
        principal = policy.authenticate(request, right)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{right.value}"
    return dependency
