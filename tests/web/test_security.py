"""The access rules of the API and viewer, each over real HTTP (uvicorn on 127.0.0.1 + httpx).

Tokens map to principals with rights; every route (reads included) needs a token once the
server has tokens; the writer of an annotation is the token's principal, never the body's
actor; a server without tokens answers reads from this machine only and refuses writes.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from engine.core.settings import Settings
from engine.web import (
    AccessPolicy,
    Principal,
    Right,
    TokenConfigError,
    TokenSet,
    create_app,
    start_server,
    tokens_from_env,
)
from engine.web.app import check_bind
from tests.web.support import UI, Seeded, seed

ALICE = "alice-token-9f8e7d6c5b4a"  # read + write + approve
READER = "reader-token-0a1b2c3d4e"  # read
CI = "ci-token-55aa66bb77cc88dd"  # write only
TOKENS = f"alice:{ALICE}:read+write+approve, reader:{READER}:read, ci:{CI}:write"


SESSION_FORMS = {("POST", "/login"), ("POST", "/logout"), ("POST", "/approvals/decide")}
"""The approvals inbox's forms: a signed session and a CSRF token admit them, never a header
(browsers resend Basic credentials by themselves); see :mod:`engine.web.inbox`."""


def _app(store: Any, **options: Any) -> Any:
    settings = Settings(temporal_ui_url=UI, namespace="prod")
    return create_app(store, settings, **options)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _concrete(path: str, run_id: str) -> str:
    return re.sub(r"\{[^}]+\}", run_id, path)


def _route_objects(routes: list[Any]) -> list[Any]:
    """The routes of a route table, included routers flattened (FastAPI keeps an included
    router as one entry wrapping the original router, whose routes carry their full path)."""
    flat = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        flat.extend(_route_objects(inner.routes) if inner is not None else [route])
    return flat


def _routes(app: Any) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, from its route table: routes added later (by other
    features) are covered without listing them here."""
    found = []
    for route in _route_objects(app.routes):
        methods = getattr(route, "methods", None) or set()
        for method in sorted(methods - {"HEAD"}):
            found.append((method, route.path))
    return found


# -- configuration ----------------------------------------------------------------------------


def test_token_configuration_from_env_file_and_the_older_single_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# operators\nops:ops-token-123456:read+approve\n\n")
    tokens = tokens_from_env(
        {"WFE_API_TOKENS": TOKENS, "WFE_API_TOKENS_FILE": str(path), "WFE_API_TOKEN": "legacy-1"}
    )
    by_name = {p.name: p.rights for p in tokens.principals}
    assert by_name == {
        "alice": {Right.READ, Right.WRITE, Right.APPROVE},
        "reader": {Right.READ},
        "ci": {Right.WRITE},
        "ops": {Right.READ, Right.APPROVE},
        "api": {Right.READ, Right.WRITE},
    }
    assert tokens.authenticate(ALICE) == Principal("alice", frozenset(Right))
    assert tokens.authenticate("legacy-1") is not None
    assert tokens.authenticate(ALICE[:-1]) is None and tokens.authenticate("") is None
    # Default rights: read and write; approving is granted explicitly only.
    (plain,) = TokenSet.parse(["bot:bot-token"], where="test").principals
    assert plain.rights == {Right.READ, Right.WRITE}
    # Neither repr nor the start-up description shows a token.
    for text in (repr(tokens), AccessPolicy(tokens=tokens).describe()):
        for secret in (ALICE, READER, CI, "ops-token-123456", "legacy-1"):
            assert secret not in text, text
    assert tokens_from_env({}) == TokenSet() and not tokens_from_env({})
    # What `wfe serve` and `wfe dev` say at start-up about who may do what.
    assert AccessPolicy().describe() == (
        "no API token: reads open to this machine only, writes disabled"
    )
    assert AccessPolicy(public_read=True).describe().startswith("public reads")
    assert (
        AccessPolicy(tokens=tokens)
        .describe()
        .startswith(
            "every route needs a token; tokens: alice(approve+read+write), reader(read), ci(write)"
        )
    )


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("alice", "the token is empty"),
        ("alice:", "the token is empty"),
        (":tok", "the name must be"),
        ("al ice:tok", "the name must be"),
        ("alice:tok:read+sudo", "unknown right 'sudo'"),
        ("alice:tok1,alice:tok2", "given twice"),
        ("alice:same,bob:same", "same token"),
        ("alice:to ken", "printable ASCII"),
    ],
)
def test_bad_token_configuration_is_refused_without_echoing_tokens(
    spec: str, fragment: str
) -> None:
    with pytest.raises(TokenConfigError, match=re.escape(fragment)) as refused:
        tokens_from_env({"WFE_API_TOKENS": spec})
    assert "tok2" not in str(refused.value) and "same" not in str(refused.value).replace(
        "same token", ""
    )


def test_missing_tokens_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenConfigError, match="cannot read the tokens file"):
        tokens_from_env({}, tokens_file=tmp_path / "absent")
    path = tmp_path / "tokens"
    path.write_text("bob:shared-token-abcdef\n")
    with pytest.raises(TokenConfigError, match="'bob' has the same token as 'alice'"):
        tokens_from_env({"WFE_API_TOKENS": "alice:shared-token-abcdef"}, tokens_file=path)
    path.write_text("alice:another-token-abcdef\n")
    with pytest.raises(TokenConfigError, match="'alice' is given twice"):
        tokens_from_env({"WFE_API_TOKENS": "alice:one-token-abcdef"}, tokens_file=path)


def test_binding_beyond_loopback_needs_tokens_or_explicit_public_reads() -> None:
    with pytest.raises(ValueError, match="127.0.0.1 only"):
        check_bind("0.0.0.0", AccessPolicy())
    check_bind("127.0.0.1", AccessPolicy())
    check_bind("::1", AccessPolicy())
    check_bind("0.0.0.0", AccessPolicy(public_read=True))
    check_bind("0.0.0.0", AccessPolicy(tokens=tokens_from_env({"WFE_API_TOKENS": TOKENS})))


# -- every route, over HTTP -------------------------------------------------------------------


async def test_every_route_needs_a_token_and_the_right(store: Any) -> None:
    s: Seeded = await seed(store)
    app = _app(store, tokens=tokens_from_env({"WFE_API_TOKENS": TOKENS}))
    routes = _routes(app)
    assert ("GET", "/api/runs/{run_id}/logs") in routes and ("GET", "/runs/{run_id}") in routes
    async with start_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        for method, path in routes:
            url = _concrete(path, s.r1.id)
            if path == "/healthz":  # liveness only: says "ok" and nothing else
                assert (await http.get(url)).json() == {"status": "ok"}
                continue
            if (method, path) in SESSION_FORMS:  # tests/web/test_inbox_browser.py covers them
                continue
            body = {} if method == "POST" else None
            for headers in ({}, _bearer("wrong-token"), {"Authorization": "Token " + ALICE}):
                answer = await http.request(method, url, json=body, headers=headers)
                assert answer.status_code == 401, (method, path, headers, answer.text)
                challenge = answer.headers["www-authenticate"]
                assert challenge == ("Bearer" if path.startswith("/api") else challenge)
                assert ALICE not in answer.text
            needed = Right.READ if method == "GET" else Right.WRITE
            lacking = CI if needed is Right.READ else READER
            if path.endswith("/decision"):  # a decision needs approve: ci writes, not approves
                needed, lacking = Right.APPROVE, CI
            refused = await http.request(method, url, json=body, headers=_bearer(lacking))
            assert refused.status_code == 403, (method, path, refused.text)
            assert f"lacks the {needed.value!r} right" in html.unescape(refused.text)

        reads = [(m, p) for m, p in routes if m == "GET" and p != "/healthz"]
        for _, path in reads:
            answer = await http.get(_concrete(path, s.r1.id), headers=_bearer(READER))
            assert answer.status_code == 200, (path, answer.text)
        api_401 = (await http.get("/api/runs")).json()
        assert api_401["error"] == "unauthorized" and api_401["field"] == "Authorization"

        # Browsers: HTTP Basic (any user name, the token as password) on reads only. The
        # viewer's 401 asks for it; a write with Basic credentials is refused, as a cross-site
        # form would send them by itself.
        page = await http.get(f"/runs/{s.r1.id}")
        assert page.status_code == 401
        assert page.headers["www-authenticate"].startswith("Basic realm=")
        assert "text/html" in page.headers["content-type"]
        assert (await http.get(f"/runs/{s.r1.id}", auth=("me", READER))).status_code == 200
        assert (await http.get("/api/runs", auth=("me", READER))).status_code == 200
        basic_write = await http.post(
            f"/api/runs/{s.r1.id}/annotations",
            json={"attributes": {"k": 1}},
            auth=("me", ALICE),
        )
        assert basic_write.status_code == 401


def test_the_route_table_declares_a_right_on_every_route(store: Any) -> None:
    app = _app(store, tokens=tokens_from_env({"WFE_API_TOKENS": TOKENS}))
    routes = _route_objects(app.routes)
    assert len(routes) > 10
    for route in routes:
        if not isinstance(route, APIRoute) or route.path == "/healthz":
            continue
        if any((method, route.path) in SESSION_FORMS for method in route.methods):
            continue
        names = {
            getattr(dependency.call, "__name__", "") for dependency in route.dependant.dependencies
        }
        assert names & {"require_read", "require_write", "require_approve"}, route.path


async def test_writes_sign_as_the_principal_never_as_the_body_actor(store: Any) -> None:
    s = await seed(store)
    app = _app(store, tokens=tokens_from_env({"WFE_API_TOKENS": TOKENS}))
    attach = f"/api/runs/{s.r1.id}/annotations"
    spoof = {
        "attributes": {"approval.approvers": ["bob"], "approval.policy.version": "v2"},
        "actor": {"kind": "user", "id": "bob", "version": "7"},
    }
    async with start_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        # ci may write, but not approvals; reader may not write at all.
        refused = await http.post(attach, json=spoof, headers=_bearer(CI))
        assert refused.status_code == 403 and refused.json()["field"] == "attributes"
        assert "'approve' right" in refused.json()["message"]
        assert (await http.post(attach, json=spoof, headers=_bearer(READER))).status_code == 403

        written = await http.post(attach, json=spoof, headers=_bearer(ALICE))
        assert written.status_code == 201, written.text
        for row in written.json()["items"]:
            assert (row["actor_kind"], row["actor_id"], row["actor_version"]) == (
                "principal",
                "alice",
                None,
            )
            assert (
                row["on_behalf_of_kind"],
                row["on_behalf_of_id"],
                row["on_behalf_of_version"],
            ) == ("user", "bob", "7")

        plain = await http.post(
            attach, json={"attributes": {"review.ok": True}}, headers=_bearer(CI)
        )
        assert plain.status_code == 201
        (row,) = plain.json()["items"]
        assert row["actor_id"] == "ci" and row["on_behalf_of_id"] is None

        # Nothing in bob's name: filtering by actor bob finds only what the seed wrote.
        listed = await http.get(
            attach, params={"actor_id": "bob", "key_prefix": "approval."}, headers=_bearer(ALICE)
        )
        assert listed.json()["items"] == []
        # The events carry the writer and whom it acted for.
        events = await http.get(f"/api/runs/{s.r1.id}/events", headers=_bearer(READER))
        created = [e for e in events.json()["items"] if e["event_type"] == "annotation:created"]
        assert created == []  # emit_event was not asked for


async def test_without_tokens_reads_answer_localhost_only_and_writes_are_refused(
    store: Any,
) -> None:
    s = await seed(store)
    async with (
        start_server(_app(store)) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        assert (await http.get(f"/api/runs/{s.r1.id}")).status_code == 200
        local = await http.get("/", headers={"Host": f"localhost:{server.port}"})
        assert local.status_code == 200
        # DNS rebinding: a page on evil.example resolved to 127.0.0.1 is not answered.
        rebound = await http.get(f"/api/runs/{s.r1.id}", headers={"Host": "evil.example"})
        assert rebound.status_code == 403 and rebound.json()["error"] == "not_local"
        write = await http.post(
            f"/api/runs/{s.r1.id}/annotations",
            json={"attributes": {"k": 1}},
            headers=_bearer("anything"),
        )
        assert write.status_code == 403 and write.json()["error"] == "writes_disabled"


async def test_public_read_opens_reads_only(store: Any) -> None:
    s = await seed(store)
    app = _app(store, tokens=tokens_from_env({"WFE_API_TOKENS": TOKENS}), public_read=True)
    async with start_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        for path in (f"/api/runs/{s.r1.id}/logs", "/", "/openapi.json"):
            answer = await http.get(path, headers={"Host": "viewer.example.com"})
            assert answer.status_code == 200, path
        attach = f"/api/runs/{s.r1.id}/annotations"
        assert (await http.post(attach, json={"attributes": {"k": 1}})).status_code == 401
        ok = await http.post(attach, json={"attributes": {"k": 1}}, headers=_bearer(CI))
        assert ok.status_code == 201


async def test_tokens_are_never_logged(store: Any, caplog: pytest.LogCaptureFixture) -> None:
    s = await seed(store)
    app = _app(store, tokens=tokens_from_env({"WFE_API_TOKENS": TOKENS}))
    with caplog.at_level(logging.DEBUG):
        async with (
            start_server(app, log_level="debug", access_log=True) as server,
            httpx.AsyncClient(base_url=server.url) as http,
        ):
            await http.get(f"/api/runs/{s.r1.id}", headers=_bearer(ALICE))
            await http.get(f"/api/runs/{s.r1.id}", headers=_bearer(ALICE + "x"))
            await http.get("/", auth=("u", READER))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"/api/runs/{s.r1.id}" in logged  # the access log did run
    for secret in (ALICE, READER):
        assert secret not in logged
