"""The local web servers' common ground: the labelling page and the studio share one way to serve and to refuse.

A server listens on this machine only and trusts no other web page: every request must name the server itself in
``Host`` (no DNS rebinding), carry the secret token of this start (printed in the page's URL), and a request that
changes anything must come from the page's own origin with a JSON body. So a page on another site that the person
happens to visit can neither read nor change what the server holds.

Every request gets an answer, and none can hold the server: a client has a few seconds for its headers, longer for
its body and a deadline for the whole request, at most ``MAX_WORKERS`` requests are served at once (more wait in
the listen queue), bodies need a Content-Length and are plain JSON objects of bounded size and depth, and files are
served only from inside their folder.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

MAX_BODY = 8192  # bytes: a page of 25 labels or one draw request is well under it
MAX_DEPTH = 16  # nesting of a JSON body: the pages send two levels
HEADER_TIMEOUT = 5.0  # seconds of silence allowed while the request line and headers arrive
BODY_TIMEOUT = 10.0  # seconds of silence allowed in the body (at most MAX_BODY bytes)
READ_DEADLINE = 20.0  # seconds to deliver the whole request, however slowly it trickles
MAX_WORKERS = 32  # requests served at once; more wait in the listen queue for a free worker
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


def read_json_object(headers, stream, connection=None) -> dict:
    """The request body: at most MAX_BODY bytes of JSON, an object nested at most MAX_DEPTH deep. A body without
    a Content-Length (chunked) is refused with 411; ``connection``, when given, gets the body's time-out."""
    if headers.get("Transfer-Encoding"):
        raise Refused(411, "send the body with a Content-Length, not in chunks")
    text = headers.get("Content-Length")
    if text is None:
        raise Refused(411, "a Content-Length is required")
    if not re.fullmatch(r"[0-9]{1,18}", text.strip()):
        raise Refused(400, "Content-Length is not a number")
    length = int(text)
    if length > MAX_BODY:
        raise Refused(413, f"the body must be at most {MAX_BODY} bytes")
    if connection is not None:
        connection.settimeout(BODY_TIMEOUT)
    try:
        raw = stream.read(length)
    except TimeoutError:
        raise Refused(408, "the body did not arrive in time") from None
    if len(raw) != length:
        raise Refused(400, "the body ended before its Content-Length")
    try:
        body = json.loads(raw or b"{}")
    except RecursionError:
        raise Refused(400, f"the body is nested more than {MAX_DEPTH} deep") from None
    except ValueError:  # not JSON, not UTF-8, or a number too long to read
        raise Refused(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    if _depth(body) > MAX_DEPTH:
        raise Refused(400, f"the body is nested more than {MAX_DEPTH} deep")
    return body


def _depth(value, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(v, level + 1) for v in children), default=level)


def whole_number(text: str, what: str, low: int, high: int) -> int:
    """A query parameter that must be a whole number in [low, high], in ASCII digits; Refused (400) otherwise."""
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
        raise Refused(400, f"{what} must be a whole number from {low} to {high}")
    return int(text)


def file_inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` when it is a regular file whose resolved path lies inside ``folder`` (a link that points
    elsewhere is not), else None."""
    path = (folder / name).resolve()
    return path if path.is_relative_to(folder.resolve()) and path.is_file() else None


def page(name: str, token: str) -> bytes:
    """A page shipped with the package (``vhuman/pages/NAME``), with this start's token filled in."""
    text = resources.files("vhuman").joinpath("pages", name).read_text(encoding="utf-8")
    return text.replace("__TOKEN__", token).encode()


class PageHandler(BaseHTTPRequestHandler):
    """Quiet request handler with the replies every route uses; subclasses set ``token`` and ``allowed_hosts``."""

    token: str
    allowed_hosts: set[str]
    timeout = HEADER_TIMEOUT  # applied to the socket before the request line is read

    def log_message(self, fmt, *args):  # keep the terminal for the person using the page
        pass

    def setup(self):
        super().setup()
        # A client that trickles its request byte by byte beats every per-read time-out: cut it at a deadline.
        self.watchdog = threading.Timer(READ_DEADLINE, self._cut)
        self.watchdog.daemon = True
        self.watchdog.start()

    def _cut(self):
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def request_read(self) -> None:
        """The whole request is in: what follows is the server's own work, which the deadline does not cut."""
        self.watchdog.cancel()

    def finish(self):
        self.watchdog.cancel()
        super().finish()

    def read_body(self) -> dict:
        body = read_json_object(self.headers, self.rfile, self.connection)
        self.request_read()
        return body

    def answer(self, route: Callable[[], None]) -> None:
        """Run one route: a refusal is its status and message; anything else unforeseen a 500 with one line,
        never a dropped connection or a traceback."""
        try:
            if self.command == "GET":
                self.request_read()
            route()
        except Refused as exc:
            self.send_json({"error": str(exc)}, exc.code)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            self.send_json({"error": "the server could not answer this request"}, 500)

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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.workers = threading.BoundedSemaphore(MAX_WORKERS)

    def process_request(self, request, client_address):
        self.workers.acquire()  # every worker is freed within READ_DEADLINE plus its own work
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.workers.release()

    def handle_error(self, request, client_address):
        # A page that moves on cancels its pending image requests: not worth a traceback in the person's terminal.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
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
