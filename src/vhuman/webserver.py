"""The local web servers' common ground: the labelling page and the studio share one way to serve and to refuse.

A server listens on this machine only and trusts no other web page: every request must name the server itself in
``Host`` (no DNS rebinding), carry the secret token of this start (printed in the page's URL), and a request that
changes anything must come from the page's own origin with a JSON body. So a page on another site that the person
happens to visit can neither read nor change what the server holds.
"""

from __future__ import annotations

import hmac
import json
import secrets
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

MAX_BODY = 8192  # bytes: a page of 25 labels or one draw request is well under it
TOKEN_HEADER = "X-Token"


class Refused(Exception):
    """A request the server does not serve; ``code`` is its HTTP status."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def check_request(headers, token: str, allowed_hosts: set[str], query_token=None, changes_state=False) -> None:
    """Raise Refused unless the request names this server, carries the token, and, when it changes something,
    comes from the page's own origin with a JSON body."""
    host = headers.get("Host", "")
    if host not in allowed_hosts:
        raise Refused(403, f"Host {host!r} is not this server")
    given = headers.get(TOKEN_HEADER) or query_token or ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Refused(403, "missing or wrong token: open the URL the command printed at its start")
    if changes_state:
        if headers.get("Origin") != f"http://{host}":
            raise Refused(403, "requests that change anything must come from the page itself")
        if headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
            raise Refused(415, "the body must be application/json")


def read_json_object(headers, stream) -> dict:
    """The request body: at most MAX_BODY bytes of JSON, an object."""
    try:
        length = int(headers.get("Content-Length") or 0)
    except ValueError:
        raise Refused(400, "Content-Length is not a number") from None
    if not 0 <= length <= MAX_BODY:
        raise Refused(413, f"the body must be at most {MAX_BODY} bytes")
    try:
        body = json.loads(stream.read(length) or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    return body


def page(name: str, token: str) -> bytes:
    """A page shipped with the package (``vhuman/pages/NAME``), with this start's token filled in."""
    text = resources.files("vhuman").joinpath("pages", name).read_text(encoding="utf-8")
    return text.replace("__TOKEN__", token).encode()


class PageHandler(BaseHTTPRequestHandler):
    """Quiet request handler with the replies every route uses; subclasses set ``token`` and ``allowed_hosts``."""

    token: str
    allowed_hosts: set[str]

    def log_message(self, fmt, *args):  # keep the terminal for the person using the page
        pass

    def send_body(self, code: int, body: bytes, ctype: str = "application/json", filename: str | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")  # the token in the URL stays on this page
        if filename:
            self.send_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, obj, code: int = 200) -> None:
        self.send_body(code, json.dumps(obj).encode())

    def check(self, query_token=None, changes_state=False) -> None:
        check_request(self.headers, self.token, self.allowed_hosts, query_token, changes_state)


class LocalServer(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of requests waits instead of being reset
    daemon_threads = True
    token: str
    url: str

    def handle_error(self, request, client_address):
        # A page that moves on cancels its pending image requests: not worth a traceback in the person's terminal.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def local_server(host: str, port: int, handler: Callable[[], type[PageHandler]]) -> LocalServer:
    """Bind (not start) a server on ``host:port`` (0: any free port) with a fresh secret token; ``handler()`` gives
    the PageHandler subclass, whose ``token`` and ``allowed_hosts`` are set here."""
    server = LocalServer((host, port), None)
    bound = server.server_address[1]
    allowed = {f"{host}:{bound}"} | ({f"localhost:{bound}"} if host == "127.0.0.1" else set())
    token = secrets.token_urlsafe(24)
    server.RequestHandlerClass = type("Handler", (handler(),), {"token": token, "allowed_hosts": allowed})
    server.token, server.url = token, f"http://{host}:{bound}/?token={token}"
    return server
