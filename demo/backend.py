"""The demo trading backend behind the gateway (R-PX-1, R-PX-2, R-UI-2; manual §1.3.2, §2.2(5)).

The gateway proxies authenticated requests here with the identity in `X-Sekisho-*` headers
and strips any the client sent; the backend trusts them because it listens on loopback only.
It still refuses a request without a user (401) and a non-admin on the admin page (403), as
defence in depth. Trading itself is not implemented: the menu leads to placeholder pages.
The header is drawn like the gateway's (same bars, labels, brackets and buttons): パスワード変更
leads to the gateway's /auth/password, and ログアウト is a one-click POST to /auth/logout carrying
the session's CSRF token, which the gateway sends in `X-Sekisho-Csrf` (§3.1). Pages follow the
`lang` cookie (or `?lang=`) like the gateway's: Japanese by default, English as well, with no
English on Japanese pages; times carry their zone; nothing overflows at 390 px.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import weakref
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from random import Random
from typing import Any, Final
from urllib.parse import unquote

import aiohttp_jinja2
import jinja2
from aiohttp import WSCloseCode, WSMsgType, web

from policy.clock import Clock, SystemClock

HEADER_USER: Final = "X-Sekisho-User"
HEADER_ROLE: Final = "X-Sekisho-Role"
HEADER_CUSTOMER: Final = "X-Sekisho-Customer"  # percent-encoded UTF-8
HEADER_NAME: Final = "X-Sekisho-Name"  # percent-encoded UTF-8
HEADER_LAST_LOGIN: Final = "X-Sekisho-Last-Login"  # ISO 8601, empty at first login
HEADER_CERT_SERIAL: Final = "X-Sekisho-Cert-Serial"
HEADER_CSRF: Final = "X-Sekisho-Csrf"  # the session's token, for the header's logout form
IDENTITY_HEADER_PREFIX: Final = "x-sekisho-"

ROLES: Final = frozenset({"admin", "contractor"})
MAX_ECHO_BODY: Final = 10 * 1024 * 1024
MAX_SLOW_SECONDS: Final = 60.0
QUOTE_INTERVAL: Final = 0.5
JST: Final = timezone(timedelta(hours=9), "JST")

# §1.3.2: the functions every role may use; ユーザ制限設定 (admin only) is added for admins.
# The manual's own word is リブオーダー (§2.2(5)'s initial screen).
TRADE_MENU: Final[Mapping[str, str]] = {
    "forward": "為替予約取引入力",
    "leave-order": "リブオーダー入力",
    "confirm": "コンファーム",
    "manage": "取引管理",
}
LANGUAGES: Final = ("ja", "en")
# Every string of the demo's pages, per language (as gateway/messages.py does for the gateway).
TEXT: Final[Mapping[str, Mapping[str, str]]] = {
    "ja": {
        "service": "外為Web 為替予約サービス", "customer": "お客様名", "user_id": "ユーザID",
        "user_name": "ユーザ名", "role": "権限", "admin": "管理者", "contractor": "締結者",
        "last_login": "前回ログイン日時", "first_login": "なし(初回ログイン)",
        "password_change": "パスワード変更", "logout": "ログアウト", "language": "表示言語",
        "account": "アカウント", "home": "初期画面", "menu": "メニュー",
        "forward": "為替予約取引入力", "leave-order": "リブオーダー入力",
        "confirm": "コンファーム", "manage": "取引管理", "restrictions": "ユーザ制限設定",
        "rates": "為替相場(参考スポットレート)", "bid": "買い気配", "ask": "売り気配",
        "updated": "更新", "connecting": "接続中", "live": "配信中", "reconnecting": "再接続待ち",
        "jst": "(日本時間)", "not_implemented": "このデモでは取引機能は実装していません。",
        "admins_only": "管理者権限ユーザのみご利用いただけます。",
        "restrictions_demo": "このデモでは設定の変更は実装していません。",
        "back_home": "初期画面へ戻る",
    },
    "en": {
        "service": "FX Web – Forward Contract Service", "customer": "Customer",
        "user_id": "User ID", "user_name": "User name", "role": "Role", "admin": "Administrator",
        "contractor": "Contractor", "last_login": "Last login",
        "first_login": "None (first login)", "password_change": "Change password",
        "logout": "Log out", "language": "Language", "account": "Account",
        "home": "Home", "menu": "Menu", "forward": "Forward contract entry",
        "leave-order": "Leave order entry", "confirm": "Confirmation",
        "manage": "Trade management", "restrictions": "User restriction settings",
        "rates": "Exchange rates (indicative spot)", "bid": "Bid", "ask": "Ask",
        "updated": "Updated", "connecting": "Connecting", "live": "Live",
        "reconnecting": "Reconnecting", "jst": "(Japan time)",
        "not_implemented": "This demo does not implement trading.",
        "admins_only": "Only administrators can use this page.",
        "restrictions_demo": "This demo does not implement changing the settings.",
        "back_home": "Back to the home screen",
    },
}
_LANGUAGE_NAMES: Final = {"ja": "日本語", "en": "English"}
# Start mid price and spread per pair (the manual's sample: 98.04/98.08 and 129.98/130.11).
_PAIRS: Final[Mapping[str, tuple[float, float]]] = {
    "USD/JPY": (150.00, 0.04),
    "EUR/JPY": (162.00, 0.10),
}
_NO_IDENTITY_PATHS: Final = frozenset({"/healthz"})
_BENCH_BODY: Final = (b"sekisho demo backend bench payload. " * 29)[:1023] + b"\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Identity:
    """Who the gateway says is asking, decoded from the `X-Sekisho-*` headers."""

    user_id: str
    role: str
    customer: str
    name: str
    last_login: str
    cert_serial: str

    @property
    def is_admin(self) -> bool:
        """Admins may also use ユーザ制限設定 (§1.3.2)."""
        return self.role == "admin"


CLOCK: Final = web.AppKey("clock", Clock)
QUOTE_SOCKETS: Final = web.AppKey("quote_sockets", weakref.WeakSet[web.WebSocketResponse])
IDENTITY: Final = web.RequestKey("identity", Identity)


def parse_identity(headers: Mapping[str, str]) -> Identity | None:
    """The identity in the gateway's headers, or None when no user is named."""
    user_id = headers.get(HEADER_USER, "").strip()
    if not user_id:
        return None
    return Identity(
        user_id=user_id,
        role=headers.get(HEADER_ROLE, "").strip(),
        customer=unquote(headers.get(HEADER_CUSTOMER, "")),
        name=unquote(headers.get(HEADER_NAME, "")),
        last_login=headers.get(HEADER_LAST_LOGIN, "").strip(),
        cert_serial=headers.get(HEADER_CERT_SERIAL, "").strip(),
    )


def language_of(request: web.Request) -> str:
    """`?lang=` first, then the `lang` cookie the gateway sets, then Japanese (R-UI-3)."""
    for value in (request.query.get("lang"), request.cookies.get("lang")):
        if value in LANGUAGES:
            return str(value)
    return "ja"


def format_last_login(value: str, lang: str = "ja") -> str:
    """An ISO 8601 time as the manual shows it (JST, `2013/08/06 09:01:41`, §2.2(5))."""
    if not value:
        return TEXT[lang]["first_login"]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return value  # shown as sent (escaped) rather than hidden
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(JST).strftime("%Y/%m/%d %H:%M:%S")


class QuoteWalk:
    """A deterministic pseudo-random walk of bid/ask quotes for USD/JPY and EUR/JPY."""

    def __init__(self, seed: int) -> None:
        self._rng = Random(seed)  # noqa: S311 -- demo prices, not a secret
        self._mid = {pair: mid for pair, (mid, _) in _PAIRS.items()}

    def step(self, at: datetime) -> list[dict[str, Any]]:
        """Move every pair one step and return one quote message per pair."""
        quotes = []
        for pair, (_, spread) in _PAIRS.items():
            mid = max(1.0, self._mid[pair] + self._rng.gauss(0.0, 0.02))
            self._mid[pair] = mid
            bid = round(mid - spread / 2, 2)
            quotes.append({"pair": pair, "bid": bid, "ask": round(bid + spread, 2),
                           "at": at.isoformat()})
        return quotes


@web.middleware
async def identity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse requests the gateway did not vouch for: no user is 401, an unknown role 403."""
    if request.path in _NO_IDENTITY_PATHS:
        return await handler(request)
    identity = parse_identity(request.headers)
    if identity is None:
        raise web.HTTPUnauthorized(text="401: no identity from the gateway\n")
    if identity.role not in ROLES:
        raise web.HTTPForbidden(text="403: unknown role\n")
    request[IDENTITY] = identity
    return await handler(request)


def _page(request: web.Request, template: str, **context: Any) -> web.Response:
    """Render an HTML page with the identity header and a nonce-based CSP."""
    nonce = secrets.token_urlsafe(16)
    identity = request[IDENTITY]
    lang = language_of(request)
    response = aiohttp_jinja2.render_template(
        template, request,
        {"me": identity, "last_login": format_last_login(identity.last_login, lang),
         "menu": TRADE_MENU, "nonce": nonce, "t": TEXT[lang], "lang": lang,
         "languages": LANGUAGES, "language_names": _LANGUAGE_NAMES, "path": request.path,
         "csrf": request.headers.get(HEADER_CSRF, ""), **context},
    )
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


async def home(request: web.Request) -> web.Response:
    """The first screen after login: identity header, live quote board, menu (§2.2(5))."""
    return _page(request, "home.html")


async def trade_placeholder(request: web.Request) -> web.Response:
    """A menu function the demo does not implement."""
    item = request.match_info["item"]
    if item not in TRADE_MENU:
        raise web.HTTPNotFound
    return _page(request, "placeholder.html", title=TEXT[language_of(request)][item])


async def restrictions(request: web.Request) -> web.Response:
    """ユーザ制限設定, admins only (§1.3.2); the gateway checks first (R-PX-2)."""
    if not request[IDENTITY].is_admin:
        raise web.HTTPForbidden(text="403: ユーザ制限設定は管理者権限ユーザのみ利用できます\n")
    return _page(request, "restrictions.html")


async def quotes_ws(request: web.Request) -> web.WebSocketResponse:
    """Stream quotes for both pairs every 0.5 s and answer {"type": "ping"} with a pong.

    The walk is seeded by `?seed=N`, or else by the user ID, so a client sees the same
    sequence each time it connects.
    """
    seed_text = request.query.get("seed")
    if seed_text is not None and not seed_text.isdigit():
        raise web.HTTPBadRequest(text="seed must be a non-negative integer\n")
    seed = int(seed_text) if seed_text else zlib.crc32(request[IDENTITY].user_id.encode())
    ws = web.WebSocketResponse(heartbeat=30.0)
    await ws.prepare(request)
    request.app[QUOTE_SOCKETS].add(ws)
    send_lock = asyncio.Lock()
    sender = asyncio.create_task(
        _send_quotes(ws, QuoteWalk(seed), request.app[CLOCK], send_lock))
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT and _is_ping(message.data):
                async with send_lock:
                    await ws.send_json({"type": "pong"})
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        request.app[QUOTE_SOCKETS].discard(ws)
    return ws


def _is_ping(data: str) -> bool:
    try:
        message = json.loads(data)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == "ping"


async def _send_quotes(ws: web.WebSocketResponse, walk: QuoteWalk, clock: Clock,
                       lock: asyncio.Lock) -> None:
    # A client that vanished makes the send fail; the reader loop then ends the handler.
    with contextlib.suppress(ConnectionResetError):
        while not ws.closed:
            for quote in walk.step(clock.now()):
                async with lock:
                    await ws.send_json(quote)
            await asyncio.sleep(QUOTE_INTERVAL)


async def echo(request: web.Request) -> web.Response:
    """Method, path, query, the `X-Sekisho-*` headers received, and the body's size and hash.

    The body is hashed as it streams in and refused with 413 beyond 10 MiB.
    """
    if (request.content_length or 0) > MAX_ECHO_BODY:
        raise web.HTTPRequestEntityTooLarge(MAX_ECHO_BODY, request.content_length or 0)
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        length += len(chunk)
        if length > MAX_ECHO_BODY:
            raise web.HTTPRequestEntityTooLarge(MAX_ECHO_BODY, length)
        digest.update(chunk)
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        if name.lower().startswith(IDENTITY_HEADER_PREFIX):
            canonical = "-".join(part.capitalize() for part in name.split("-"))
            headers.setdefault(canonical, []).append(value)
    return web.json_response({
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path,  # the target exactly as the gateway relayed it
        "query_string": request.query_string,
        "query": {key: request.query.getall(key) for key in request.query},
        "headers": headers,
        "received_headers": [[name, value] for name, value in request.headers.items()
                             if name.lower() != "cookie"],
        "body_length": length,
        "body_sha256": digest.hexdigest(),
    })


async def slow(request: web.Request) -> web.Response:
    """Answer after `?seconds=N` (0 to 60) seconds, for proxy timeout tests."""
    try:
        seconds = float(request.query.get("seconds", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="seconds must be a number\n") from None
    if not 0 <= seconds <= MAX_SLOW_SECONDS:
        raise web.HTTPBadRequest(text=f"seconds must be between 0 and {MAX_SLOW_SECONDS:g}\n")
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds})


async def healthz(_request: web.Request) -> web.Response:
    """Liveness: "ok", without identity."""
    return web.Response(text="ok")


async def bench(_request: web.Request) -> web.Response:
    """A fixed 1 KiB plain-text answer (identity still required) for benchmarks."""
    return web.Response(body=_BENCH_BODY, content_type="text/plain")


async def _close_quote_sockets(app: web.Application) -> None:
    sockets = app[QUOTE_SOCKETS]
    for ws in list(sockets):  # closing removes them from the set
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def build_app(*, clock: Clock | None = None) -> web.Application:
    """The demo backend application; `clock` stamps the quotes (default: the system clock)."""
    app = web.Application(middlewares=[identity_middleware], client_max_size=MAX_ECHO_BODY)
    app[CLOCK] = clock if clock is not None else SystemClock()
    app[QUOTE_SOCKETS] = weakref.WeakSet[web.WebSocketResponse]()
    aiohttp_jinja2.setup(app, loader=jinja2.DictLoader(_TEMPLATES), autoescape=True,
                         undefined=jinja2.StrictUndefined)
    app.on_shutdown.append(_close_quote_sockets)
    app.router.add_get("/", home)
    app.router.add_get("/trade/{item}", trade_placeholder)
    app.router.add_get("/admin/restrictions", restrictions)
    app.router.add_get("/ws/quotes", quotes_ws)
    app.router.add_route("GET", "/api/echo", echo)
    app.router.add_route("POST", "/api/echo", echo)
    app.router.add_get("/api/slow", slow)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/bench", bench)
    return app


_BASE = """<!doctype html>
<html lang="{{ lang }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %} | {{ t.service }}</title>
<link rel="stylesheet" href="/auth/static/sekisho.css">
<style nonce="{{ nonce }}">
/* The header is the gateway's own stylesheet (above, served by the gateway); this is only
   the demo's content. */
.demo-grid { display: flex; flex-wrap: wrap; gap: 1rem; }
.demo-grid > * { flex: 1 1 18rem; min-width: 0; }
.demo-card { background: #fff; border: 1px solid #c9d3dd; border-radius: 6px;
  padding: .9rem 1.1rem; }
.demo-card h1, .demo-card h2 { font-size: 1.05rem; margin: 0 0 .6rem; color: #0b3d6e; }
.menu ul { list-style: none; margin: 0; padding: 0; } .menu li { margin: .35rem 0; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #c9d3dd; padding: .3rem .4rem; text-align: center; }
td { font-family: ui-monospace, monospace; font-size: 1.1rem; }
.note { font-size: .85rem; color: #4a5866; }
</style>
</head>
<body>
<header class="site-header">
<div class="brand-bar"><div class="brand-inner">
<p class="brand"><span class="brand-mark" aria-hidden="true">FX</span>
<span class="brand-name">{{ t.service }}</span></p>
<nav class="lang-switch" aria-label="{{ t.language }}"><ul>
{% for code in languages %}
{% if code == lang %}
<li><span aria-current="true" lang="{{ code }}">{{ language_names[code] }}</span></li>
{% else %}
<li><a href="{{ path }}?lang={{ code }}" lang="{{ code }}" hreflang="{{ code }}">
{{- language_names[code] }}</a></li>
{% endif %}
{% endfor %}
</ul></nav>
</div></div>
<div class="identity-bar"><div class="identity-inner">
<dl class="identity">
<div><dt>{{ t.customer }}</dt><dd id="customer-name">{{ me.customer }}</dd></div>
<div><dt>{{ t.user_id }}</dt><dd id="user-id">{{ me.user_id }}</dd></div>
<div><dt>{{ t.user_name }}</dt><dd id="user-name">{{ me.name }}</dd></div>
<div><dt>{{ t.role }}</dt>
<dd id="user-role">{{ t.admin if me.is_admin else t.contractor }}</dd></div>
<div><dt>{{ t.last_login }}</dt><dd id="last-login">{{ last_login }}</dd></div>
</dl>
<nav class="identity-actions" aria-label="{{ t.account }}">
<a class="button small" id="password-change" href="/auth/password">{{ t.password_change }}</a>
<form method="post" action="/auth/logout"><input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit" class="button small" id="logout">{{ t.logout }}</button></form>
</nav>
</div></div>
</header>
<main id="main">
<div class="demo-grid">
{% block main %}{% endblock %}
</div>
</main>
</body>
</html>
"""

_HOME = """{% extends "base.html" %}
{% block title %}{{ t.home }}{% endblock %}
{% block main %}
<nav class="menu" aria-labelledby="menu-heading">
<section class="demo-card">
<h2 id="menu-heading">{{ t.menu }}</h2>
<ul>
{% for item in menu %}
<li><a href="/trade/{{ item }}">{{ t[item] }}</a></li>
{% endfor %}
{% if me.is_admin %}
<li><a href="/admin/restrictions">{{ t.restrictions }}</a></li>
{% endif %}
</ul>
</section>
</nav>
<section class="demo-card" id="quote-board" data-updates="0" data-live="{{ t.live }}"
         data-reconnecting="{{ t.reconnecting }}">
<h2>{{ t.rates }}</h2>
<div class="table-wrap">
<table>
<tr><th colspan="2">USD/JPY</th><th colspan="2">EUR/JPY</th></tr>
<tr><th>{{ t.bid }}</th><th>{{ t.ask }}</th><th>{{ t.bid }}</th><th>{{ t.ask }}</th></tr>
<tr><td id="usdjpy-bid">-</td><td id="usdjpy-ask">-</td>
<td id="eurjpy-bid">-</td><td id="eurjpy-ask">-</td></tr>
</table>
</div>
<p class="note">{{ t.updated }}: <span id="quote-at">-</span>
<span id="quote-zone">{{ t.jst }}</span> <span id="quote-status">{{ t.connecting }}</span></p>
</section>
<script nonce="{{ nonce }}">
(function () {
  "use strict";
  var board = document.getElementById("quote-board");
  var status = document.getElementById("quote-status");
  var ids = {"USD/JPY": "usdjpy", "EUR/JPY": "eurjpy"};
  var updates = 0, delay = 1000;
  // The quote's time in Japan time, as the gateway shows times (2013/08/06 09:01:41).
  var format = new Intl.DateTimeFormat("ja-JP", {timeZone: "Asia/Tokyo", year: "numeric",
    month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
    hour12: false});
  function show(id, value) { document.getElementById(id).textContent = Number(value).toFixed(2); }
  function connect() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var ws = new WebSocket(scheme + "//" + location.host + "/ws/quotes");
    ws.onopen = function () { status.textContent = board.getAttribute("data-live"); delay = 1000; };
    ws.onmessage = function (event) {
      var quote;
      try { quote = JSON.parse(event.data); } catch (e) { return; }
      var id = ids[quote.pair];
      if (!id) { return; }
      show(id + "-bid", quote.bid);
      show(id + "-ask", quote.ask);
      document.getElementById("quote-at").textContent = format.format(new Date(quote.at));
      updates += 1;
      board.setAttribute("data-updates", String(updates));
    };
    ws.onclose = function () {
      status.textContent = board.getAttribute("data-reconnecting");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
</script>
{% endblock %}
"""

_PLACEHOLDER = """{% extends "base.html" %}
{% block title %}{{ title }}{% endblock %}
{% block main %}
<section class="demo-card">
<h1>{{ title }}</h1>
<p>{{ t.not_implemented }}</p>
<p><a href="/">{{ t.back_home }}</a></p>
</section>
{% endblock %}
"""

_RESTRICTIONS = """{% extends "base.html" %}
{% block title %}{{ t.restrictions }}{% endblock %}
{% block main %}
<section class="demo-card">
<h1>{{ t.restrictions }}</h1>
<p>{{ t.admins_only }}</p>
<p>{{ t.restrictions_demo }}</p>
<p><a href="/">{{ t.back_home }}</a></p>
</section>
{% endblock %}
"""

_TEMPLATES: Final = {
    "base.html": _BASE,
    "home.html": _HOME,
    "placeholder.html": _PLACEHOLDER,
    "restrictions.html": _RESTRICTIONS,
}
