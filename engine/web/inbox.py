"""The viewer's approvals inbox: the decisions waiting across runs, decided from the page.

The forms are plain HTML (the pages allow no script). Deciding needs a viewer session: a
reviewer signs in once (``/login``) with their API token, whose principal must hold the
``approve`` right, and gets an HttpOnly, ``SameSite=Strict`` cookie naming that principal,
signed with a key the app draws at random (sessions end when the server restarts). Browsers
resend HTTP Basic credentials by themselves, so those never admit a decision. Every decision
form carries a CSRF token bound to the session (an HMAC of it), and a POST from another site
is refused, so a page elsewhere cannot make a signed-in reviewer's browser decide. The
principal is looked up again at each decision: a token removed or stripped of ``approve``
since sign-in decides nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from engine.errors import EngineError
from engine.web.approvals_api import approvals_of
from engine.web.auth import AccessPolicy, Principal, Right, require
from engine.web.state import WebState, get_state
from engine.web.views import html_error, render, run_path

__all__ = ["SESSION_COOKIE", "csrf_token", "router"]

SESSION_COOKIE = "wfe_session"
SESSION_SECONDS = 12 * 3600
INBOX_PAGE = 100

router = APIRouter(include_in_schema=False)
State = Annotated[WebState, Depends(get_state)]
_READ = [Depends(require(Right.READ))]
"""The pages need the read right, like every viewer page; the POSTs check the session."""


def _policy(request: Request) -> AccessPolicy:
    policy: AccessPolicy = request.app.state.wfe_access
    return policy


def _key(request: Request) -> bytes:
    """The app's session-signing key, drawn on first use."""
    key: bytes | None = getattr(request.app.state, "wfe_inbox_key", None)
    if key is None:
        key = secrets.token_bytes(32)
        request.app.state.wfe_inbox_key = key
    return key


def _sign(request: Request, payload: str) -> str:
    return hmac.new(_key(request), payload.encode(), hashlib.sha256).hexdigest()


def _new_session(request: Request, principal: Principal) -> str:
    raw = f"{principal.name}\0{int(time.time()) + SESSION_SECONDS}"
    payload = base64.urlsafe_b64encode(raw.encode()).decode()
    return f"{payload}.{_sign(request, payload)}"


def _session(request: Request) -> tuple[Principal, str] | None:
    """The signed-in reviewer (as the tokens say now) and their cookie, or ``None``."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie or "." not in cookie:
        return None
    payload, _, signature = cookie.rpartition(".")
    if not hmac.compare_digest(signature, _sign(request, payload)):
        return None
    try:
        name, expires = base64.urlsafe_b64decode(payload).decode().split("\0")
        if int(expires) < time.time():
            return None
    except ValueError:
        return None
    principal = next((p for p in _policy(request).tokens.principals if p.name == name), None)
    return (principal, cookie) if principal is not None else None


def csrf_token(request: Request, cookie: str) -> str:
    """The CSRF token of a session: forms carry it, the POST must send it back."""
    return _sign(request, f"csrf\0{cookie}")


def _same_origin(request: Request) -> bool:
    """Whether a POST comes from this site's own pages.

    Browsers say where a request comes from in ``Sec-Fetch-Site``; those that do not say it in
    ``Origin``, which the pages' ``no-referrer`` policy turns into ``null`` even for this site,
    so ``null`` is trusted only when ``Sec-Fetch-Site`` vouches for it.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser form (which would send one): the CSRF token decides
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host")


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", errors="replace")
    return {key: values[-1] for key, values in parse_qs(body, keep_blank_values=True).items()}


def _local(path: str) -> str:
    """Only redirect within this site."""
    return path if path.startswith("/") and not path.startswith("//") else "/approvals"


def _age(since: datetime) -> str:
    seconds = max(int((datetime.now(UTC) - since).total_seconds()), 0)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


@router.get("/approvals", response_class=HTMLResponse, dependencies=_READ)
async def inbox_page(
    state: State,
    request: Request,
    workflow: str = "",
    requested_from: str = "",
    cursor: str | None = None,
    done: str = "",
) -> HTMLResponse:
    """Pending approvals, oldest first, each with approve / reject forms."""
    try:
        page = await approvals_of(state).pending(
            workflow_id=workflow or None,
            requested_from=requested_from or None,
            limit=INBOX_PAGE,
            cursor=cursor,
        )
    except EngineError as exc:
        return html_error(state, 400, "Bad request", exc.message)
    session = _session(request)
    next_url = None
    if page.next_cursor:
        query = {"workflow": workflow, "requested_from": requested_from, "cursor": page.next_cursor}
        next_url = "/approvals?" + urlencode({k: v for k, v in query.items() if v})
    return render(
        "approvals.html",
        state=state,
        page="approvals",
        items=[
            {
                "item": item,
                "age": _age(item.waiting_since),
                "path": run_path(item.workflow_run_id),
            }
            for item in page.items
        ],
        reviewer=session[0] if session else None,
        csrf=csrf_token(request, session[1]) if session else "",
        can_decide=state.kernel is not None
        and session is not None
        and session[0].can(Right.APPROVE),
        filters={"workflow": workflow, "requested_from": requested_from},
        next_url=next_url,
        done=done,
        login_url="/login?" + urlencode({"next": str(request.url.path)}),
    )


@router.get("/login", response_class=HTMLResponse, dependencies=_READ)
async def login_page(
    state: State, request: Request, next: str = "/approvals", error: str = ""
) -> HTMLResponse:
    """Sign in to decide, with an API token whose principal holds ``approve``."""
    return render(
        "login.html",
        state=state,
        page="login",
        next=_local(next),
        error=error,
        writes_enabled=bool(_policy(request).tokens),
    )


@router.post("/login")
async def login(state: State, request: Request) -> Response:
    """Check the token and start a session for the principal named in the form."""
    form = await _form(request)
    target = _local(form.get("next", "/approvals"))
    tokens = _policy(request).tokens
    if not tokens:
        return html_error(state, 403, "Forbidden", "decisions are disabled: no API tokens")
    if not _same_origin(request):
        return html_error(state, 403, "Forbidden", "sign-in from another site refused")
    principal = tokens.authenticate(form.get("token", ""))
    if principal is None or not principal.can(Right.APPROVE):
        error = "wrong token" if principal is None else f"{principal.name} may not approve"
        query = urlencode({"next": target, "error": error})
        return RedirectResponse(f"/login?{query}", status_code=303)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        _new_session(request, principal),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(state: State, request: Request) -> Response:
    """End the session."""
    response = RedirectResponse("/approvals", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.post("/approvals/decide")
async def decide(state: State, request: Request) -> Response:
    """Approve or reject from the inbox (or a run page), as the signed-in reviewer."""
    form = await _form(request)
    session = _session(request)
    if session is None:
        return html_error(state, 401, "Unauthorized", "sign in (/login) to decide")
    if not _same_origin(request) or not hmac.compare_digest(
        form.get("csrf", ""), csrf_token(request, session[1])
    ):
        return html_error(state, 403, "Forbidden", "the form's CSRF token is missing or wrong")
    if not session[0].can(Right.APPROVE):
        return html_error(state, 403, "Forbidden", f"{session[0].name} may not approve")
    if state.kernel is None:
        return html_error(state, 503, "Unavailable", "this server has no Temporal client")
    run_id, stage_id = form.get("run_id", ""), form.get("stage_id", "")
    decision = form.get("decision")
    if decision not in ("approve", "reject") or not run_id or not stage_id:
        return html_error(state, 422, "Bad request", "run_id, stage_id and decision are needed")
    comment = form.get("comment", "").strip() or None
    if decision == "reject" and comment is None:
        return html_error(state, 422, "Bad request", "say why the stage is rejected")
    try:
        await state.kernel.approvals.decide(
            run_id,
            stage_id,
            approved=decision == "approve",
            actor=session[0].actor,
            comment=comment,
        )
    except EngineError as exc:
        return html_error(state, 409, "Not decided", exc.message)
    done = f"{decision}d {stage_id} of run {run_id}"
    return RedirectResponse(
        f"{run_path(run_id)}?{urlencode({'decided': done})}#annotations", status_code=303
    )
