"""The review web page: reviewers label queued pairs in a browser, one pair at a time.

A thin layer over review.session (which decides what a reviewer sees and what a label means).
The app owns no state: each request opens the Store, uses it and closes it, under a lock (FastAPI
runs sync endpoints in a thread pool). DuckDB allows one writing process per file, so holding it
only per request leaves the file free between clicks for the round a finished queue resumes; while a
round holds it, the page answers 503 and says who holds it.

Security choices, because model text is untrusted and labels become training data:
  * pages are server-rendered with autoescaping; model text is only ever printed as escaped text
    (CSS `white-space: pre-wrap` keeps its layout), and a strict Content-Security-Policy forbids
    inline scripts and styles, so even a missed escape could not run code; characters that render
    invisibly (bidi overrides, zero-width) are shown as markers and the pair is flagged;
  * who labelled is always derived from the credentials (a session cookie, or a reviewer token in
    `Authorization: Bearer` for scripts), never from a form field or the URL;
  * logging in starts a server-side session: the HttpOnly, SameSite=Strict cookie holds a random
    secret whose hash is stored; logout deletes it, it expires after `session_ttl_s`, and revoking
    the reviewer ends all of theirs;
  * SameSite does not separate ports (every 127.0.0.1 port is the same site), so every
    state-changing request must come from this origin (`Sec-Fetch-Site`, `Origin`), and with a
    cookie it must carry the session's CSRF token, which only this origin's pages contain;
  * the pair a label is for must be the one shown to that reviewer, in the order the server chose;
  * requests must name this server in their Host header (the loopback names and the bound host), so a
    web page whose domain an attacker points at 127.0.0.1 (DNS rebinding) is refused;
  * a rationale over 4000 characters is refused with a message, never cut silently;
  * a browser that disconnects mid-request is logged in one quiet line, not as an error.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import jinja2
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from constitution.loader import Constitution
from review import session
from review.text_safety import visible_segments
from store.db import Store, StoreError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "rlaif_session"
MAX_FORM_BYTES = 64 * 1024   # a rationale is capped at 4000 characters; anything far bigger is not our form
MAX_FORM_FIELDS = 20

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: with no-referrer, browsers send `Origin: null` on our own form posts
    "referrer-policy": "same-origin",
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every {{ value }} is HTML-escaped; templates never use |safe
    undefined=jinja2.StrictUndefined,
)
_templates.filters["segments"] = visible_segments  # model text with hidden characters made visible


# ---- failures, each turned into a page by the handlers in _add_error_pages ----------------------
class NotLoggedIn(Exception):
    """No valid reviewer token on the request."""


class UnknownRound(Exception):
    def __init__(self, round_index: int):
        super().__init__(f"There is no round {round_index}.")


class BadForm(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class CrossSite(Exception):
    """A state-changing request that did not come from this site's own pages."""


# ---- helpers ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    """Who sent a request: a reviewer, through a browser session (`session_secret` from its cookie)
    or a bearer token (`session_secret` None: no cookie, so no cross-site risk and no CSRF token)."""
    reviewer_id: str
    session_secret: str | None

    @property
    def csrf(self) -> str | None:
        return session.csrf_token(self.session_secret) if self.session_secret else None


def page(name: str, status: int = 200, **context: object) -> HTMLResponse:
    context.setdefault("reviewer", None)
    context.setdefault("csrf", None)
    return HTMLResponse(_templates.get_template(name).render(**context), status_code=status)


def bearer_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def require_same_origin(request: Request) -> None:
    """Refuse a state-changing request sent by a page of another origin (another port included).

    Browsers say where a request comes from: `Sec-Fetch-Site` (same-origin, same-site, cross-site,
    none), or in older browsers only `Origin` ("null" when they will not say: refused). Scripts send
    neither and need no cookie, so they pass."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site not in ("same-origin", "none"):
            raise CrossSite()
        return
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise CrossSite()


async def form_fields(request: Request) -> dict[str, str]:
    """The url-encoded form body, size-limited (an empty body is an empty form).

    Parsed here with the standard library so the app does not need python-multipart. When a
    field is repeated the first value counts, so appending a second value cannot override it.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadForm(413, "The form is too large.")
    if not body:
        return {}
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise BadForm(415, "Send the form as application/x-www-form-urlencoded.")
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict",
                          max_num_fields=MAX_FORM_FIELDS)
    except ValueError:  # includes UnicodeDecodeError and too many fields
        raise BadForm(400, "The form could not be read.") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


def browser_text(value: str | None) -> str | None:
    """A textarea's value as typed: browsers submit line breaks as CRLF (HTML spec), we store LF."""
    return value.replace("\r\n", "\n") if value else None


def notify_round_done(callback: Callable[[Store, int], None], store: Store, round_index: int) -> None:
    """Tell the caller a round's queue is fully labelled; a failing callback must not lose the label."""
    try:
        callback(store, round_index)
    except Exception:
        log.exception("on_round_done(%s) failed; the labels are stored", round_index)


class SecurityHeaders:
    """Adds the security headers to every response, static files and error pages included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_static = scope["path"].startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if not is_static:  # pages show who is logged in and what is queued: never cache them
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _add_error_pages(app: FastAPI) -> None:
    @app.exception_handler(NotLoggedIn)
    def not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        # A browser opening a page goes to the login form; anything that changes data is refused.
        if request.method in ("GET", "HEAD"):
            return RedirectResponse("/login", status_code=303)
        return page("error.html", 401, title="Not logged in",
                    message="This needs a valid reviewer token. Log in again.", back="/login")

    @app.exception_handler(CrossSite)
    def cross_site(request: Request, exc: CrossSite) -> Response:
        return page("error.html", 403, title="Refused",
                    message="This request did not come from the review page itself (or its form was stale). "
                            "Nothing was changed; reload the page and try again.", back="/")

    @app.exception_handler(UnknownRound)
    def unknown_round(request: Request, exc: UnknownRound) -> Response:
        return page("error.html", 404, title="No such round", message=str(exc), back="/")

    @app.exception_handler(RequestValidationError)
    def bad_path(request: Request, exc: RequestValidationError) -> Response:
        # The only typed path parameter is the round index: "/rounds/abc" names no round.
        return page("error.html", 404, title="No such round", message="Round numbers are integers.", back="/")

    @app.exception_handler(BadForm)
    def bad_form(request: Request, exc: BadForm) -> Response:
        return page("error.html", exc.status, title="Bad request", message=str(exc), back="/")

    @app.exception_handler(session.ReviewError)
    def review_error(request: Request, exc: session.ReviewError) -> Response:
        round_index = request.path_params.get("round_index")
        back = f"/rounds/{int(round_index)}" if round_index is not None else "/"
        return page("error.html", 400, title="Label not stored", message=str(exc), back=back)

    @app.exception_handler(StoreError)
    def store_busy(request: Request, exc: StoreError) -> Response:
        # A round holds the database (DuckDB: one writing process): nothing was stored; try again later.
        round_index = request.path_params.get("round_index")
        back = f"/rounds/{int(round_index)}" if round_index is not None else "/"
        return page("error.html", 503, title="Database busy", message=f"{exc} Nothing was stored; try again later.",
                    back=back)

    @app.exception_handler(ClientDisconnect)
    def gone(request: Request, exc: ClientDisconnect) -> Response:
        log.info("%s %s: the client disconnected before its request was read; nothing was stored", request.method,
                 request.url.path)
        return Response(status_code=400)  # no one is there to read it

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return page("error.html", exc.status_code, title="Error", message=str(exc.detail), back="/")


# ---- the app ------------------------------------------------------------------------------------
def create_app(
    open_store: Callable[[], AbstractContextManager[Store]],
    constitution: Constitution,
    reviews_per_pair: int = 1,
    on_round_done: Callable[[Store, int], None] = lambda store, round_index: None,
    session_ttl_s: int = 8 * 3600,
    hosts: Sequence[str] = (),
) -> FastAPI:
    """The review site; `open_store()` opens the Store for one request.

    `on_round_done(store, round_index)` is called with the request's store when a label completes a
    round's queue: every queued pair has `reviews_per_pair` labels. A login lasts `session_ttl_s`.
    `hosts`: names the page is reached by besides the loopback ones (the address it is bound to).
    """
    app = FastAPI(title="rlaif review", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()
    app.state.store_lock = lock  # anyone else touching the store while the app runs must hold it

    @contextmanager
    def connected() -> Iterator[Store]:
        with lock, open_store() as store:
            yield store
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]", *hosts])
    app.add_middleware(SecurityHeaders)  # added last: outermost, so even a refused Host gets the headers
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_error_pages(app)

    def caller(request: Request) -> Caller:
        """The logged-in reviewer (a dependency of every protected endpoint): a bearer token, else the
        session cookie. Revoked tokens and expired or ended sessions count as not logged in."""
        token, secret = bearer_token(request), request.cookies.get(SESSION_COOKIE) or None
        with connected() as store:
            if token is not None:
                row = session.reviewer_for_token(store, token)
                who = Caller(row.reviewer_id, None) if row else None
            else:
                reviewer_id = session.reviewer_for_session(store, secret)
                who = Caller(reviewer_id, secret) if reviewer_id and secret else None
        if who is None:
            raise NotLoggedIn()
        return who

    def changing(request: Request, form: dict[str, str] = Depends(form_fields)) -> tuple[Caller, dict[str, str]]:
        """A state-changing request: from this origin, logged in, and, with a cookie, the session's
        CSRF token in the form. Returns the caller and the form."""
        require_same_origin(request)
        who = caller(request)
        if who.csrf is not None and not secrets.compare_digest(form.get("csrf", ""), who.csrf):
            raise CrossSite()
        return who, form

    def check_round(store: Store, round_index: int) -> None:
        if store.round_by_index(round_index) is None:
            raise UnknownRound(round_index)

    @app.get("/login")
    def login_page() -> Response:
        return page("login.html")

    @app.post("/login")
    def login(request: Request, form: dict[str, str] = Depends(form_fields)) -> Response:
        require_same_origin(request)  # no logging a browser in as someone else from another page
        token = form.get("token", "").strip()
        with connected() as store:
            row = session.reviewer_for_token(store, token)
            secret = session.start_session(store, row.reviewer_id, session_ttl_s) if row else None
        if secret is None:
            return page("login.html", 401, error="That token is not valid.")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, secret, max_age=session_ttl_s, httponly=True, samesite="strict", path="/")
        return response

    @app.post("/logout")
    def logout(checked: tuple[Caller, dict[str, str]] = Depends(changing)) -> Response:
        who, _ = checked
        if who.session_secret is not None:
            with connected() as store:
                session.end_session(store, who.session_secret)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @app.get("/")
    def queue(who: Caller = Depends(caller)) -> Response:
        with connected() as store:
            rounds = sorted(store.rounds(), key=lambda r: r.round_index, reverse=True)
            rows = [(r, session.queue_progress(store, r.round_index, who.reviewer_id, reviews_per_pair)) for r in rounds]
        return page("queue.html", reviewer=who.reviewer_id, csrf=who.csrf, rows=rows)

    principle_ids = frozenset(p.id for p in constitution.principles)

    @app.get("/rounds/{round_index}")
    def review_page(round_index: int, who: Caller = Depends(caller)) -> Response:
        with connected() as store:
            check_round(store, round_index)
            item = session.next_item(store, round_index, who.reviewer_id, reviews_per_pair)
            progress = session.queue_progress(store, round_index, who.reviewer_id, reviews_per_pair)
        return page("review.html", reviewer=who.reviewer_id, csrf=who.csrf, round_index=round_index, item=item,
                    progress=progress, constitution=constitution)

    @app.post("/rounds/{round_index}/label")
    def label(round_index: int, checked: tuple[Caller, dict[str, str]] = Depends(changing)) -> Response:
        who, form = checked
        with connected() as store:
            check_round(store, round_index)
            before = session.queue_progress(store, round_index, who.reviewer_id, reviews_per_pair)
            session.record_review(store, round_index, who.reviewer_id, pair_id=form.get("pair_id", ""),
                                  choice=form.get("choice", ""), rationale=browser_text(form.get("rationale")),
                                  reviews_per_pair=reviews_per_pair, shown=form.get("shown_order"),
                                  principle=form.get("principle") or None, principles=principle_ids)
            after = session.queue_progress(store, round_index, who.reviewer_id, reviews_per_pair)
            # Only the label that completes the queue reports it (not every later skip or late label).
            if after.total > 0 and after.done == after.total and before.done < after.total:
                notify_round_done(on_round_done, store, round_index)
        return RedirectResponse(f"/rounds/{round_index}", status_code=303)

    @app.post("/rounds/{round_index}/undo")
    def undo(round_index: int, checked: tuple[Caller, dict[str, str]] = Depends(changing)) -> Response:
        who, _ = checked
        with connected() as store:
            check_round(store, round_index)
            session.undo_last(store, round_index, who.reviewer_id)
        return RedirectResponse(f"/rounds/{round_index}", status_code=303)

    return app
