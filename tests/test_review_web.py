"""The review web page in a real browser (Debian's chromium driven by Playwright) against a live server.

Each test gets a fresh DuckDB file, a Store the test reads (holding the app's lock; the app opens its
own connection per request, in the same process) and a uvicorn server on a free port of 127.0.0.1.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, Response, sync_playwright

from constitution.loader import load_constitution
from review.app import create_app
from review.session import add_reviewer
from store.db import Store
from store.rows import ReviewQueueRow, ReviewRow, RoundRow

from helpers import seed_pairs

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SQL_PAYLOADS = ["'; DROP TABLE reviews; --", "' OR '1'='1"]


@dataclass
class Site:
    url: str
    store: Store
    lock: threading.Lock
    tokens: dict[str, str]
    texts: list[tuple[str, str, str]]
    round_done_calls: list[int] = field(default_factory=list)

    def reviews(self, reviewer: str | None = None) -> list[ReviewRow]:
        with self.lock:
            rows = self.store.reviews_of_round("r")
        return [r for r in rows if reviewer is None or r.reviewer == reviewer]

    def count_rows(self) -> dict[str, int]:
        with self.lock:
            return self.store.count_rows()

    def client(self, reviewer: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[reviewer]}"} if reviewer else {}
        return httpx.Client(base_url=self.url, headers=headers, follow_redirects=False, timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


@pytest.fixture()
def make_site(tmp_path):
    """make_site(texts): one queued pair per (prompt, text a, text b) in round 1, reviewers alice and bob."""
    running: list[tuple[uvicorn.Server, threading.Thread, Store]] = []

    def make(texts: list[tuple[str, str, str]], session_ttl_s: int = 3600) -> Site:
        store = Store(tmp_path / "rlaif.duckdb")
        pairs = seed_pairs(store, texts)
        store.append([RoundRow(round_id="r", round_index=1, status="running", policy_id="m",
                               constitution_hash="x", seed=0, config_json={})])
        store.append([ReviewQueueRow(pair_id=p.pair_id, round_id="r", reasons=["random"]) for p in pairs])
        tokens = {name: add_reviewer(store, name) for name in ("alice", "bob")}
        calls: list[int] = []
        # the app opens its own connection per request (same process, same database instance)
        app = create_app(lambda: Store(tmp_path / "rlaif.duckdb"), load_constitution("bundled:support"), reviews_per_pair=1,
                         on_round_done=lambda _store, round_index: calls.append(round_index), session_ttl_s=session_ttl_s)

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes the socket over
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=sock.getsockname()[1],
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, store))
        for _ in range(500):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        return Site(url=f"http://127.0.0.1:{sock.getsockname()[1]}", store=store, lock=app.state.store_lock,
                    tokens=tokens, texts=texts, round_done_calls=calls)

    yield make
    for server, thread, store in running:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


def log_in(page: Page, site: Site, reviewer: str) -> None:
    """Open a protected page, get sent to the login form, type the token and press Enter."""
    page.goto(site.url + "/rounds/1")
    assert page.url == site.url + "/login"
    page.locator("#token").press_sequentially(site.tokens[reviewer])
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url == site.url + "/"


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden {name} field in the page"
    return match.group(1)


def pair_index(site: Site, text: str) -> tuple[int, str]:
    """Which seeded pair and which side ("a"/"b") a completion text shown on screen is."""
    for i, (_, a, b) in enumerate(site.texts):
        if text == a:
            return i, "a"
        if text == b:
            return i, "b"
    raise AssertionError(f"{text!r} is not a seeded completion")


# ---- 1: keyboard-only labelling ------------------------------------------------------------------
def test_keyboard_labelling_and_undo(make_site, page: Page):
    site = make_site([(f"Prompt {i}", f"A-text {i}", f"B-text {i}") for i in range(3)])
    log_in(page, site, "alice")
    assert "rlaif_session" in {c["name"] for c in page.context.cookies()}
    assert "0 / 3" in page.inner_text("table.rounds")
    page.goto(site.url + "/rounds/1")
    assert "0 / 3 this round" in page.inner_text("body")

    # Enter without a choice does nothing: the page's key handler submits forms synchronously
    # (requestSubmit), so a submit event would have been counted by the time the key press returns.
    page.evaluate("window.submits = 0; window.addEventListener('submit', () => { window.submits += 1; })")
    page.focus("#rationale")
    page.keyboard.press("Enter")
    assert page.evaluate("window.submits") == 0
    assert site.reviews() == [] and page.url == site.url + "/rounds/1"
    page.evaluate("document.activeElement.blur()")

    expected = []  # (pair_id, shown_order, winner in a/b terms, rationale)
    decided_by = []  # (pair_id, principle, winner)
    # the choice; then, optionally, the number of the principle that decided it; then the rationale
    steps = [("1", None, None), ("2", "2", "shorter, and it says what happens next"), ("3", None, None)]
    for key, principle_key, rationale in steps:
        pair_id = page.input_value("input[name=pair_id]")
        left, right = page.inner_text("#response-1"), page.inner_text("#response-2")
        i, left_side = pair_index(site, left)
        assert pair_id == f"pair{i}" and pair_index(site, right) == (i, "b" if left_side == "a" else "a")
        assert f"Prompt {i}" == page.inner_text("#prompt-text")

        page.keyboard.press(key)
        selected = page.locator("button.choice.selected")
        assert selected.count() == 1 and selected.inner_text().startswith(f"{key}:")
        if principle_key:  # a digit right after the choice names a principle, then the rationale box has the focus
            page.keyboard.press(principle_key)
            assert page.evaluate("document.activeElement.id") == "rationale"
            principle = load_constitution("bundled:support").principles[int(principle_key) - 1].id
            assert page.input_value("#principle") == principle
        if rationale:
            # 's' and 'u' typed here are text, not skip/undo; Shift+Enter is a newline.
            page.keyboard.type(rationale)
            page.keyboard.press("Shift+Enter")
            page.keyboard.type("second line")
            rationale = rationale + "\nsecond line"
        with page.expect_navigation():
            page.keyboard.press("Enter")
        right_side = "b" if left_side == "a" else "a"
        winner = {"1": left_side, "2": right_side, "3": "tie"}[key]
        expected.append((pair_id, "ab" if left_side == "a" else "ba", winner, rationale))
        if principle_key:
            decided_by.append((pair_id, principle, winner))

    assert "Queue done" in page.inner_text("body")
    assert "3 / 3 this round" in page.inner_text("body")
    assert site.round_done_calls == [1]
    assert len({e[0] for e in expected}) == 3

    with page.expect_navigation():
        page.keyboard.press("u")

    stored = sorted((r.pair_id, r.shown_order, r.winner, r.rationale) for r in site.reviews("alice") if r.principle is None)
    assert stored == sorted(expected[:2])
    assert [(r.pair_id, r.principle, r.winner) for r in site.reviews("alice") if r.principle] == decided_by
    assert len(site.reviews()) == 3  # two overall labels, and the principle label stored with one of them
    # The undone pair is offered again.
    assert page.input_value("input[name=pair_id]") == expected[2][0]
    body = page.inner_text("body")
    assert "2 / 3 this round" in body and "you: 2 labelled" in body

    # 's' skips at once: stored as a skip, not a label.
    with page.expect_navigation():
        page.keyboard.press("s")
    skipped = [r for r in site.reviews("alice") if r.pair_id == expected[2][0] and r.principle is None]
    assert [r.winner for r in skipped] == ["skip"]
    assert "Queue done" in page.inner_text("body")


def test_clicking_a_button_labels(make_site, page: Page):
    site = make_site([("Prompt 0", "A-text 0", "B-text 0")])
    log_in(page, site, "bob")
    page.goto(site.url + "/rounds/1")
    assert page.locator("#hidden-warning").count() == 0  # plain text: no flag
    i, left_side = pair_index(site, page.inner_text("#response-1"))
    with page.expect_navigation():
        page.click("button[data-choice=right]")
    (row,) = site.reviews("bob")
    assert row.winner == ("b" if left_side == "a" else "a") and row.rationale is None


# ---- 2: model text cannot run code ------------------------------------------------------------------
def test_untrusted_text_is_shown_as_text(make_site, page: Page):
    script = "<script>window.__pwned=1</script>"
    img = '<img src=x onerror="window.__pwned=2">'
    prompt = "<script>window.__pwned=3</script><b>bold?</b>\n  indented & more"
    site = make_site([(prompt, script, img)])
    log_in(page, site, "alice")
    response = page.goto(site.url + "/rounds/1")
    assert response is not None
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"

    shown = page.inner_text("body")
    assert script in shown and img in shown
    assert page.inner_text("#prompt-text") == prompt  # whitespace and newlines kept (pre-wrap)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img, main b").count() == 0
    assert page.locator("script").count() == 1  # only /static/review.js

    # An error message quoting user input is escaped too.
    with site.client("alice") as client:
        r = client.post("/rounds/1/label", data={"pair_id": script, "shown_order": "ab", "choice": "left"})
    assert r.status_code == 400
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in r.text and script not in r.text


# ---- 3: tokens decide who may do what -------------------------------------------------------------------
def test_tokens_are_required_and_decide_the_reviewer(make_site):
    site = make_site([(f"Prompt {i}", f"A-text {i}", f"B-text {i}") for i in range(3)])
    with httpx.Client(base_url=site.url, follow_redirects=False, timeout=10) as anon:
        r = anon.post("/rounds/1/label", data={"pair_id": "pair0", "shown_order": "ab", "choice": "left"})
        assert r.status_code == 401
        assert anon.post("/rounds/1/undo").status_code == 401
        for path in ("/rounds/1", "/"):
            r = anon.get(path)
            assert r.status_code == 303 and r.headers["location"] == "/login"
        assert anon.get("/login").status_code == 200
        assert anon.get("/static/review.js").status_code == 200
        assert anon.get("/static/review.css").headers["content-security-policy"] == CSP

        # A wrong token, as a header, a cookie or at the login form.
        wrong = {"Authorization": "Bearer not-a-token"}
        assert anon.get("/rounds/1", headers=wrong).status_code == 303
        assert anon.post("/rounds/1/undo", headers=wrong).status_code == 401
        assert anon.post("/rounds/1/undo", headers={"Cookie": "rlaif_session=nope"}).status_code == 401
        assert anon.post("/rounds/1/undo", headers={"Cookie": f"rlaif_session={site.tokens['alice']}"}).status_code == 401
        r = anon.post("/login", data={"token": "not-a-token"})
        assert r.status_code == 401 and "set-cookie" not in r.headers and "not valid" in r.text

        for other_page in ({"Sec-Fetch-Site": "same-site"}, {"Origin": "http://127.0.0.1:1"}):  # login CSRF
            r = anon.post("/login", data={"token": site.tokens["alice"]}, headers=other_page)
            assert r.status_code == 403 and "set-cookie" not in r.headers
        r = anon.post("/login", data={"token": site.tokens["alice"]})
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "rlaif_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        alice_session = r.cookies["rlaif_session"]
        assert alice_session != site.tokens["alice"]  # the cookie is a session, not the reviewer's token
    assert site.reviews() == []

    with site.client("alice") as alice:
        page_html = alice.get("/rounds/1").text
        r = alice.post("/rounds/1/label", data={"pair_id": hidden(page_html, "pair_id"),
                                                "shown_order": hidden(page_html, "shown_order"), "choice": "left"})
        assert r.status_code == 303
    alice_rows = site.reviews("alice")
    assert len(alice_rows) == 1

    with site.client("bob") as bob:
        assert bob.post("/rounds/1/undo").status_code == 303  # bob has nothing to undo ...
        assert site.reviews("alice") == alice_rows            # ... and alice's label stays
        page_html = bob.get("/rounds/1").text
        bob_pair = hidden(page_html, "pair_id")
        assert bob_pair != alice_rows[0].pair_id  # labelled pairs leave everyone's queue
        r = bob.post("/rounds/1/label", data={"pair_id": bob_pair, "shown_order": hidden(page_html, "shown_order"),
                                              "choice": "tie", "reviewer": "alice"})
        assert r.status_code == 303
        # A cookie for alice does not beat bob's header either.
        page_html = bob.get("/rounds/1").text
        r = bob.post("/rounds/1/label", headers={"Cookie": f"rlaif_session={alice_session}"},
                     data={"pair_id": hidden(page_html, "pair_id"), "shown_order": hidden(page_html, "shown_order"),
                           "choice": "skip"})
        assert r.status_code == 303
    assert site.reviews("alice") == alice_rows
    assert sorted(r.winner for r in site.reviews("bob")) == ["skip", "tie"]
    assert {r.pair_id for r in site.reviews("bob") if r.winner == "tie"} == {bob_pair}


def test_unknown_round_is_a_404_page(make_site):
    site = make_site([("Prompt 0", "A-text 0", "B-text 0")])
    with site.client("alice") as alice:
        for path in ("/rounds/7", "/rounds/abc"):
            r = alice.get(path)
            assert r.status_code == 404 and "No such round" in r.text
        assert alice.post("/rounds/7/label", data={"pair_id": "pair0", "shown_order": "ab",
                                                   "choice": "left"}).status_code == 404


# ---- 4: SQL injection through every field --------------------------------------------------------------
def test_sql_injection_is_inert(make_site):
    site = make_site([(f"Prompt {i}", f"A-text {i}", f"B-text {i}") for i in range(3)])
    before = site.count_rows()
    assert before["reviews"] == 0 and before["reviewers"] == 2 and before["review_queue"] == 3

    with site.client("alice") as alice:
        valid = {"pair_id": "pair0", "shown_order": "ab", "choice": "left"}
        for payload in SQL_PAYLOADS:
            for name in ("pair_id", "shown_order", "choice"):
                r = alice.post("/rounds/1/label", data={**valid, name: payload})
                assert r.status_code == 400, (name, payload)
            assert alice.get(f"/rounds/1{payload}").status_code == 404
        for payload in SQL_PAYLOADS:  # a rationale is free text: stored verbatim
            page_html = alice.get("/rounds/1").text
            r = alice.post("/rounds/1/label", data={"pair_id": hidden(page_html, "pair_id"),
                                                    "shown_order": hidden(page_html, "shown_order"),
                                                    "choice": "tie", "rationale": payload})
            assert r.status_code == 303
    with httpx.Client(base_url=site.url, follow_redirects=False, timeout=10) as anon:
        for payload in SQL_PAYLOADS:
            r = anon.post("/login", data={"token": payload})
            assert r.status_code == 401 and "set-cookie" not in r.headers
            assert anon.post("/rounds/1/undo", headers={"Authorization": f"Bearer {payload}"}).status_code == 401
            assert anon.get("/", headers={"Authorization": f"Bearer {payload}"}).status_code == 303

    assert sorted(r.rationale for r in site.reviews("alice")) == sorted(SQL_PAYLOADS)
    after = site.count_rows()
    assert after == {**before, "reviews": 2}


# ---- 5: the page holds the database only per request ----------------------------------------------------
def test_while_a_round_holds_the_database_the_page_says_who_and_then_recovers(make_site):
    import subprocess
    import sys
    import textwrap

    site = make_site([("Prompt 0", "A-text 0", "B-text 0")])
    with site.client("alice") as alice, site.store.released():  # the test's own connection steps aside too
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from store.db import Store
            s = Store({str(site.store.location.file)!r})
            s.note("round 2: training")
            print("ready", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "ready"
            busy = alice.get("/rounds/1")
            assert busy.status_code == 503 and "Database busy" in busy.text
            assert f"in use by PID {holder.pid}" in busy.text and "round 2: training" in busy.text
            refused = alice.post("/rounds/1/label", data={"pair_id": "x", "shown_order": "ab", "choice": "left"})
            assert refused.status_code == 503 and "Nothing was stored" in refused.text
        finally:
            holder.communicate("\n", timeout=30)
        assert alice.get("/rounds/1").status_code == 200  # the round let go: the page works again


# ---- 6: requests from other origins, logout, expiry, revocation ---------------------------------------
@pytest.fixture()
def hostile_site() -> Iterator[Callable[[str], str]]:
    """hostile_site(html) -> the URL of a page with that HTML, served on another port of 127.0.0.1
    (the same *site* as the review page for the browser, SameSite=Strict cookies included)."""
    import http.server

    pages: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path, b"not found")
            self.send_response(200 if self.path in pages else 404)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(html: str) -> str:
        path = f"/page{len(pages)}.html"
        pages[path] = html.encode()
        return f"http://127.0.0.1:{server.server_address[1]}{path}"

    yield serve
    server.shutdown()
    thread.join(timeout=10)


def auto_post_form(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    return f'<form id="f" method="post" action="{action}">{inputs}</form><script>document.getElementById("f").submit()</script>'


def test_a_page_on_another_port_cannot_label_undo_or_log_out(make_site, hostile_site, page: Page):
    site = make_site([(f"Prompt {i}", f"A-text {i}", f"B-text {i}") for i in range(3)])
    log_in(page, site, "alice")
    page.goto(site.url + "/rounds/1")
    target = {"pair_id": page.input_value("input[name=pair_id]"), "shown_order": page.input_value("input[name=shown_order]"),
              "choice": "left"}
    with page.expect_navigation():
        page.click("button[data-choice=right]")  # one real label, for the undo attack below
    (real,) = site.reviews("alice")
    target = {**target, "pair_id": page.input_value("input[name=pair_id]"),
              "shown_order": page.input_value("input[name=shown_order]")}

    # A top-level form post from the other port: the browser sends the session cookie along.
    for action, fields in ((f"{site.url}/rounds/1/label", target), (f"{site.url}/rounds/1/undo", {}),
                           (f"{site.url}/logout", {})):
        def answers_action(r: Response, action: str = action) -> bool:
            return r.url == action

        with page.expect_response(answers_action) as response:
            page.goto(hostile_site(auto_post_form(action, fields)))
        assert response.value.status == 403, action
        assert "did not come from the review page" in page.inner_text("body")
    # A script's fetch from the other port (no-cors: it cannot read the answer, but the request is sent).
    page.goto(hostile_site("<p>hi</p>"))
    page.evaluate("""async ([url, body]) => { await fetch(url, {method: "POST", mode: "no-cors", credentials: "include",
                      headers: {"content-type": "application/x-www-form-urlencoded"}, body}); }""",
                  [f"{site.url}/rounds/1/label", "&".join(f"{k}={v}" for k, v in target.items())])
    assert site.reviews("alice") == [real]

    # Still logged in (the forged logout did nothing), and the page's own forms work.
    page.goto(site.url + "/rounds/1")
    assert page.url == site.url + "/rounds/1"
    with page.expect_navigation():
        page.click("button[data-choice=tie]")
    assert len(site.reviews("alice")) == 2

    # Same origin but no CSRF token (a script holding a copied cookie, say): refused too.
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "rlaif_session")
    with httpx.Client(base_url=site.url, headers={"Cookie": f"rlaif_session={cookie}"}, timeout=10) as client:
        html = client.get("/rounds/1").text
        form = {"pair_id": hidden(html, "pair_id"), "shown_order": hidden(html, "shown_order"), "choice": "left"}
        assert client.post("/rounds/1/label", data=form).status_code == 403
        assert client.post("/rounds/1/label", data={**form, "csrf": "0" * 64}).status_code == 403
        assert client.post("/rounds/1/label", data={**form, "csrf": hidden(html, "csrf")},
                           headers={"Origin": "http://127.0.0.1:1"}).status_code == 403
        assert len(site.reviews("alice")) == 2
        assert client.post("/rounds/1/label", data={**form, "csrf": hidden(html, "csrf")}).status_code == 303
    assert len(site.reviews("alice")) == 3


def session_cookie(page: Page) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == "rlaif_session")


def replayed(site: Site, cookie: str) -> int:
    """Status of a request made with a copy of a session cookie (as if stolen before logout/expiry)."""
    with httpx.Client(base_url=site.url, headers={"Cookie": f"rlaif_session={cookie}"}, follow_redirects=False,
                      timeout=10) as client:
        return client.get("/rounds/1").status_code


def test_logout_ends_the_session_on_the_server(make_site, page: Page):
    site = make_site([("Prompt 0", "A-text 0", "B-text 0")])
    log_in(page, site, "alice")
    cookie = session_cookie(page)
    assert replayed(site, cookie) == 200
    with page.expect_navigation():
        page.click("text=Log out")
    assert page.url == site.url + "/login"
    assert replayed(site, cookie) == 303  # the copied cookie is worth nothing now


def test_a_session_expires_after_its_ttl(make_site, page: Page):
    import time

    site = make_site([("Prompt 0", "A-text 0", "B-text 0")], session_ttl_s=2)
    logged_in_at = time.monotonic()
    log_in(page, site, "alice")
    cookie = session_cookie(page)
    assert replayed(site, cookie) == 200
    while replayed(site, cookie) == 200:  # poll: the server must end it on its own
        assert time.monotonic() - logged_in_at < 30, "the session did not expire"
        page.wait_for_timeout(200)
    assert time.monotonic() - logged_in_at >= 1.5  # it lasted its ttl (less the clock's rounding)
    page.goto(site.url + "/rounds/1")
    assert page.url == site.url + "/login"


def test_revoking_a_reviewer_logs_out_their_browser_and_stops_their_token(make_site, page: Page):
    from review.session import revoke_reviewer

    site = make_site([("Prompt 0", "A-text 0", "B-text 0")])
    log_in(page, site, "alice")
    page.goto(site.url + "/rounds/1")
    assert page.url == site.url + "/rounds/1"
    with site.lock:
        revoke_reviewer(site.store, "alice")
    page.goto(site.url + "/rounds/1")
    assert page.url == site.url + "/login"
    with site.client("alice") as alice, site.client("bob") as bob:
        assert alice.get("/rounds/1").status_code == 303 and alice.post("/rounds/1/undo").status_code == 401
        assert bob.get("/rounds/1").status_code == 200  # only alice
    page.locator("#token").press_sequentially(site.tokens["alice"])
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "not valid" in page.inner_text("body")


# ---- 7: text that renders invisibly is shown --------------------------------------------------------------
def test_bidi_overrides_and_zero_width_characters_are_shown_and_the_pair_flagged(make_site, page: Page):
    site = make_site([("Refund\u200b please", "Your refund of \u202e05$\u202c is on its way.", "We sent it.")])
    log_in(page, site, "alice")
    page.goto(site.url + "/rounds/1")
    warning = page.inner_text("#hidden-warning")
    assert "U+202E" in warning and "U+202C" in warning and "U+200B" in warning
    shown = page.inner_text("#response-1") + page.inner_text("#response-2")
    assert "[U+202E RIGHT-TO-LEFT OVERRIDE]05$[U+202C POP DIRECTIONAL FORMATTING]" in shown
    assert "\u202e" not in shown and "\u200b" not in page.inner_text("#prompt-text")
    assert page.locator(".text .hidden-char").count() == 3


@pytest.mark.parametrize("char", [
    "\u3164",      # HANGUL FILLER (a letter that renders as nothing; Default_Ignorable)
    "\u2800",      # BRAILLE PATTERN BLANK
    "\ufe0f",      # VARIATION SELECTOR-16 (Default_Ignorable)
    "\u2028",      # LINE SEPARATOR (Zl)
    "\u2029",      # PARAGRAPH SEPARATOR (Zp)
    "\u0007",      # BELL (a control character, Cc)
    "\u0000",      # NUL
    "\U000e0041",  # TAG LATIN CAPITAL LETTER A (Cf)
    "\ue000",      # a private-use character (Co)
])
def test_invisible_characters_of_every_kind_are_marked(make_site, page: Page, char):
    site = make_site([("Where is my order?", f"It ships{char} today.", "It left yesterday.")])
    log_in(page, site, "alice")
    page.goto(site.url + "/rounds/1")
    code = f"U+{ord(char):04X}"
    assert code in page.inner_text("#hidden-warning")
    shown = page.inner_text("#response-1") + page.inner_text("#response-2")
    assert f"[{code} " in shown and char not in shown
    assert page.locator(".text .hidden-char").count() == 1


def test_a_request_that_names_another_host_is_refused(make_site):
    """DNS rebinding: a page on attacker.example, its name pointed at 127.0.0.1, reaches the port but
    not with our name in its Host header."""
    site = make_site([("q", "a", "b")])
    with site.client("alice") as client:
        assert client.get("/rounds/1").status_code == 200
        forged = client.get("/rounds/1", headers={"Host": "attacker.example"})
        assert forged.status_code == 400 and "Invalid host header" in forged.text
        assert forged.headers["content-security-policy"] == CSP  # refused pages carry the headers too
        label = client.post("/rounds/1/label", data={"pair_id": "pair0", "choice": "left"}, headers={"Host": "attacker.example:80"})
        assert label.status_code == 400
    assert site.reviews() == []


def test_an_oversized_rationale_is_refused_with_a_message_and_nothing_is_stored(make_site, page: Page):
    site = make_site([("q", "answer a", "answer b")])
    log_in(page, site, "alice")
    page.goto(site.url + "/rounds/1")
    page.keyboard.press("1")
    page.keyboard.press("Tab")  # no principle: on to the rationale
    page.fill("#rationale", "x" * 4500)  # as a paste would
    with page.expect_navigation():
        page.keyboard.press("Enter")
    body = page.inner_text("body")
    assert "Label not stored" in body and "4500 characters long; the limit is 4000" in body
    assert site.reviews() == []
