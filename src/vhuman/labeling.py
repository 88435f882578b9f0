"""Stage 2a: hand labels of gender and image quality, and the local web page to make them.

The labels live in one CSV (image_id, gender, quality, labeled_at); gender is ``female`` or ``male``, quality
``good`` or ``bad``. Every change rewrites the whole file through a temporary file, fsync and rename, under a lock,
so a killed server or two open tabs never lose or tear a label.

Start the page with ``vhuman-label --images results/generated/images --labels data/labels/manual_labels.csv``.

The server listens on this machine only and trusts no other web page: every request must name the server itself
in ``Host`` (no DNS rebinding), carry the secret token of this start (printed in the page's URL), and a request that
changes labels must come from the page's own origin with a JSON body. So a page on another site that the person
happens to visit can neither read nor change their labels.
"""

from __future__ import annotations

import csv
import hmac
import json
import os
import re
import secrets
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd

from vhuman.atomic import atomic_path, remove_stale_temporaries

COLUMNS = ("image_id", "gender", "quality", "labeled_at")
GENDERS = ("female", "male")
QUALITIES = ("good", "bad")
IMAGE_ID = re.compile(r"^[0-9]{6}$")
MAX_BODY = 4096  # bytes: a label is well under 200


class LabelFileError(ValueError):
    """The hand-label CSV is malformed; the message names the file, the line and the fix."""


def read_labels(path: str | Path, known_ids: set[str] | None = None) -> pd.DataFrame:
    """Read and check a hand-label CSV; a later row for the same image replaces an earlier one."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    try:
        # utf-8-sig: a byte-order mark, as spreadsheet programs write, is accepted.
        with open(path, newline="", encoding="utf-8-sig") as f:
            return _parse_labels(path, csv.DictReader(f), known_ids)
    except UnicodeDecodeError as exc:
        raise LabelFileError(
            f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r}; Latin-1 or a "
            "spreadsheet's own format?); save it as UTF-8 CSV"
        ) from exc


def _parse_labels(path: Path, reader: csv.DictReader, known_ids: set[str] | None) -> pd.DataFrame:
    if reader.fieldnames is None or tuple(reader.fieldnames) != COLUMNS:
        raise LabelFileError(f"{path}: the header must be {','.join(COLUMNS)}, found {reader.fieldnames}")
    rows = {}
    for row in reader:
        line = reader.line_num  # the file's own line number, blank lines counted
        if None in row or None in row.values():
            raise LabelFileError(f"{path}, line {line}: expected {len(COLUMNS)} fields; fix or delete the line")
        if row["gender"] not in GENDERS or row["quality"] not in QUALITIES:
            raise LabelFileError(
                f"{path}, line {line}: gender must be one of {GENDERS} and quality one of "
                f"{QUALITIES}, got {row['gender']!r}, {row['quality']!r}; fix or delete the line"
            )
        if known_ids is not None and row["image_id"] not in known_ids:
            raise LabelFileError(
                f"{path}, line {line}: image {row['image_id']!r} is not among the generated "
                "images; were the labels made for another run?"
            )
        rows[row["image_id"]] = row
    return pd.DataFrame(list(rows.values()), columns=list(COLUMNS))


def write_labels(path: str | Path, rows: list[dict]) -> None:
    """Write the whole CSV durably: temporary file, fsync, rename, fsync of the folder."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class LabelStore:
    """The labels of one image set, in memory and on disk; thread-safe."""

    def __init__(self, csv_path: str | Path, image_ids: list[str]):
        self.path = Path(csv_path)
        remove_stale_temporaries(self.path)  # left by a server killed mid-write
        self.image_ids = list(image_ids)
        self.known = set(self.image_ids)
        table = read_labels(self.path, self.known)
        # Insertion order is labelling order, which undo walks back.
        self.rows: dict[str, dict] = {
            r["image_id"]: dict(r) for r in table.sort_values("labeled_at").to_dict("records")
        }
        self.skipped: list[str] = []
        self.lock = threading.Lock()
        self.started = time.time()
        self.done_at_start = len(self.rows)

    def _next(self, count: int) -> list[str]:
        pending = [i for i in self.image_ids if i not in self.rows and i not in self.skipped]
        pending += [i for i in self.skipped if i not in self.rows]
        return pending[:count]

    def state(self, count: int = 5) -> dict:
        with self.lock:
            minutes = max((time.time() - self.started) / 60, 1e-9)
            return {
                "total": len(self.image_ids),
                "done": len(self.rows),
                "next": self._next(count),
                "rate_per_min": round((len(self.rows) - self.done_at_start) / minutes, 1),
                "last": next(reversed(self.rows)) if self.rows else None,
            }

    def label(self, image_id: str, gender: str, quality: str) -> None:
        if image_id not in self.known:
            raise KeyError(image_id)
        if gender not in GENDERS or quality not in QUALITIES:
            raise ValueError(f"gender must be one of {GENDERS}, quality one of {QUALITIES}")
        with self.lock:
            self.rows.pop(image_id, None)
            self.rows[image_id] = {
                "image_id": image_id,
                "gender": gender,
                "quality": quality,
                "labeled_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            }
            if image_id in self.skipped:
                self.skipped.remove(image_id)
            write_labels(self.path, list(self.rows.values()))

    def undo(self) -> str | None:
        with self.lock:
            if not self.rows:
                return None
            image_id = next(reversed(self.rows))
            del self.rows[image_id]
            write_labels(self.path, list(self.rows.values()))
            return image_id

    def skip(self, image_id: str) -> None:
        if image_id not in self.known:
            raise KeyError(image_id)
        with self.lock:
            if image_id in self.skipped:
                self.skipped.remove(image_id)
            self.skipped.append(image_id)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Label faces</title>
<style>
 body { font-family: sans-serif; background: #222; color: #eee; margin: 0; text-align: center; }
 #face { width: min(70vh, 90vw); height: min(70vh, 90vw); image-rendering: pixelated; margin-top: 2vh;
         border: 6px solid #444; }
 #face.bad { border-color: #d33; }
 #bar { height: 8px; background: #444; } #fill { height: 8px; background: #4a4; width: 0; }
 .keys span { display: inline-block; margin: 0 .6em; padding: .2em .5em; border: 1px solid #888; border-radius: 4px; }
 #status { margin: .5em; font-size: 1.2em; }
</style></head>
<body>
<div id="bar"><div id="fill"></div></div>
<div id="status">loading…</div>
<img id="face" alt="face to label">
<div id="quality">quality: <b id="q">good</b></div>
<p class="keys"><span>F female</span><span>M male</span><span>B toggle bad quality</span>
<span>S skip</span><span>Z / Backspace undo</span></p>
<div id="message"></div>
<script>
let current = null, bad = false, busy = false;
const TOKEN = "__TOKEN__";
async function call(method, url, body) {
  const r = await fetch(url, {method, headers: {"Content-Type": "application/json", "X-Label-Token": TOKEN},
                              body: body ? JSON.stringify(body) : undefined});
  if (!r.ok) throw new Error(await r.text());
  return r.json();
}
function show(state) {
  current = state.next.length ? state.next[0] : null;
  document.getElementById("fill").style.width = (100 * state.done / state.total) + "%";
  document.getElementById("status").textContent =
    `${state.done} / ${state.total} labelled · ${state.rate_per_min} per minute`;
  const img = document.getElementById("face");
  if (current) { img.src = "/images/" + current + ".png?token=" + TOKEN; img.dataset.id = current; }
  else {
    img.removeAttribute("src"); img.dataset.id = "";
    document.getElementById("status").textContent += " · all done";
  }
  for (const id of state.next.slice(1)) { new Image().src = "/images/" + id + ".png?token=" + TOKEN; }
  bad = false; render();
}
function render() {
  document.getElementById("q").textContent = bad ? "bad" : "good";
  document.getElementById("face").className = bad ? "bad" : "";
}
async function act(fn) {
  if (busy) return; busy = true;
  try { show(await fn()); document.getElementById("message").textContent = ""; }
  catch (e) { document.getElementById("message").textContent = "error: " + e.message; }
  finally { busy = false; }
}
document.addEventListener("keydown", (e) => {
  const k = e.key.toLowerCase();
  if ((k === "f" || k === "m") && current)
    act(() => call("POST", "/api/label", {image_id: current, gender: k === "f" ? "female" : "male",
                                          quality: bad ? "bad" : "good"}));
  else if (k === "b") { bad = !bad; render(); }
  else if (k === "s" && current) act(() => call("POST", "/api/skip", {image_id: current}));
  else if (k === "z" || k === "backspace") { e.preventDefault(); act(() => call("POST", "/api/undo")); }
});
act(() => call("GET", "/api/state"));
</script></body></html>
"""


class Refused(Exception):
    """A request the server does not serve; ``code`` is its HTTP status."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def check_request(headers, token: str, allowed_hosts: set[str], query_token=None, changes_state=False) -> None:
    """Raise Refused unless the request names this server, carries the token, and, when it changes labels, comes
    from the page's own origin with a JSON body."""
    host = headers.get("Host", "")
    if host not in allowed_hosts:
        raise Refused(403, f"Host {host!r} is not this server")
    given = headers.get("X-Label-Token") or query_token or ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Refused(403, "missing or wrong token: open the URL vhuman-label printed at its start")
    if changes_state:
        if headers.get("Origin") != f"http://{host}":
            raise Refused(403, "requests that change labels must come from the labelling page itself")
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


def make_handler(store: LabelStore, images_dir: Path, token: str, allowed_hosts: set[str]):
    """The request handler. ``allowed_hosts`` are the ``Host`` values that name this server (``127.0.0.1:PORT`` and,
    on the loopback address, ``localhost:PORT``); its own origin is ``http://`` + one of them."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # keep the terminal for the person labelling
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")  # the token in the URL stays on this page
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj, code=200):
            self._send(code, json.dumps(obj).encode())

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            try:
                check_request(self.headers, token, allowed_hosts, query.get("token", [None])[0])
            except Refused as exc:
                return self._json({"error": str(exc)}, exc.code)
            if url.path == "/":
                return self._send(200, PAGE.replace("__TOKEN__", token).encode(), "text/html; charset=utf-8")
            if url.path == "/api/state":
                return self._json(store.state())
            m = re.fullmatch(r"/images/([0-9]{6})\.png", url.path)
            # Only ids of this dataset are served: no other path can reach the disk.
            if m and m.group(1) in store.known:
                path = images_dir / f"{m.group(1)}.png"
                if path.is_file():
                    return self._send(200, path.read_bytes(), "image/png")
            return self._send(404, b'{"error": "not found"}')

        def do_POST(self):
            try:
                check_request(self.headers, token, allowed_hosts, changes_state=True)
                body = read_json_object(self.headers, self.rfile)
                if self.path == "/api/label":
                    store.label(str(body.get("image_id")), body.get("gender"), body.get("quality"))
                elif self.path == "/api/skip":
                    store.skip(str(body.get("image_id")))
                elif self.path == "/api/undo":
                    store.undo()
                else:
                    return self._send(404, b'{"error": "not found"}')
            except Refused as exc:
                return self._json({"error": str(exc)}, exc.code)
            except KeyError:
                return self._send(404, b'{"error": "unknown image id"}')
            except ValueError as exc:
                return self._json({"error": str(exc)}, 400)
            return self._json(store.state())

    return Handler


class LabelServer(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of requests waits instead of being reset
    daemon_threads = True
    token: str
    url: str


def dataset_ids(images_dir: str | Path, first: int | None = None) -> list[str]:
    ids = sorted(p.stem for p in Path(images_dir).glob("*.png") if IMAGE_ID.match(p.stem))
    return ids[:first] if first else ids


def serve(
    images_dir: str | Path, labels_csv: str | Path, first: int | None = 2000, host: str = "127.0.0.1", port: int = 8765
) -> LabelServer:
    """Build (not start) the labelling server for the first ``first`` images of ``images_dir``; its ``url`` carries
    this start's secret token."""
    ids = dataset_ids(images_dir, first)
    if not ids:
        raise FileNotFoundError(
            f"{images_dir}: no images to label; run `snakemake results/generated/latents.parquet` first"
        )
    store = LabelStore(labels_csv, ids)
    token = secrets.token_urlsafe(24)
    server = LabelServer((host, port), None)
    bound = server.server_address[1]
    allowed = {f"{host}:{bound}"} | ({f"localhost:{bound}"} if host == "127.0.0.1" else set())
    server.RequestHandlerClass = make_handler(store, Path(images_dir), token, allowed)
    server.token, server.url = token, f"http://{host}:{bound}/?token={token}"
    return server


def simulate_hand_labels(truth: pd.DataFrame, first: int, error_rate: float, seed: int, out_path: str | Path) -> int:
    """Hand labels for the synthetic world: the truth of the first images with random human mistakes.

    Each label is flipped with probability ``error_rate``, independently for gender and quality. Returns the number
    of flipped labels.
    """
    rows = truth.sort_values("image_id").head(first)
    rng = np.random.default_rng(seed)
    flip_g = rng.random(len(rows)) < error_rate
    flip_q = rng.random(len(rows)) < error_rate
    female = (rows["gender"].to_numpy() > 0.5) ^ flip_g
    good = (rows["quality"].to_numpy() > 0.5) ^ flip_q
    start = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
    out = [
        {
            "image_id": i,
            "gender": "female" if f else "male",
            "quality": "good" if q else "bad",
            "labeled_at": datetime.fromtimestamp(start + k, UTC).isoformat(timespec="microseconds"),
        }
        for k, (i, f, q) in enumerate(zip(rows["image_id"], female, good, strict=True))
    ]
    write_labels(out_path, out)
    return int(flip_g.sum() + flip_q.sum())
