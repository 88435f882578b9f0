"""Stage 2a: hand labels of gender and image quality, and the local web page to make them.

The labels live in one CSV (image_id, gender, quality, labeled_at); gender is ``female`` or ``male``, quality
``good`` or ``bad``. Every change rewrites the whole file through a temporary file, fsync and rename, under a lock,
so a killed server or two open tabs never lose or tear a label.

Start the page with ``vhuman-label --images results/generated/images --labels data/labels/manual_labels.csv``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd

from vhuman.io import atomic_path

COLUMNS = ("image_id", "gender", "quality", "labeled_at")
GENDERS = ("female", "male")
QUALITIES = ("good", "bad")
IMAGE_ID = re.compile(r"^[0-9]{6}$")


class LabelFileError(ValueError):
    """The hand-label CSV is malformed; the message names the file, the line and the fix."""


def read_labels(path: str | Path, known_ids: set[str] | None = None) -> pd.DataFrame:
    """Read and check a hand-label CSV; a later row for the same image replaces an earlier one."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or tuple(reader.fieldnames) != COLUMNS:
            raise LabelFileError(f"{path}: the header must be {','.join(COLUMNS)}, found {reader.fieldnames}")
        rows = {}
        for line, row in enumerate(reader, start=2):
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
async function call(method, url, body) {
  const r = await fetch(url, {method, headers: {"Content-Type": "application/json"},
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
  if (current) { img.src = "/images/" + current + ".png"; img.dataset.id = current; }
  else {
    img.removeAttribute("src"); img.dataset.id = "";
    document.getElementById("status").textContent += " · all done";
  }
  for (const id of state.next.slice(1)) { new Image().src = "/images/" + id + ".png"; }
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


def make_handler(store: LabelStore, images_dir: Path):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # keep the terminal for the person labelling
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj, code=200):
            self._send(code, json.dumps(obj).encode())

        def do_GET(self):
            if self.path == "/":
                return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            if self.path == "/api/state":
                return self._json(store.state())
            m = re.fullmatch(r"/images/([0-9]{6})\.png", self.path)
            # Only ids of this dataset are served: no other path can reach the disk.
            if m and m.group(1) in store.known:
                path = images_dir / f"{m.group(1)}.png"
                if path.is_file():
                    return self._send(200, path.read_bytes(), "image/png")
            return self._send(404, b'{"error": "not found"}')

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                if self.path == "/api/label":
                    store.label(str(body.get("image_id")), body.get("gender"), body.get("quality"))
                elif self.path == "/api/skip":
                    store.skip(str(body.get("image_id")))
                elif self.path == "/api/undo":
                    store.undo()
                else:
                    return self._send(404, b'{"error": "not found"}')
            except KeyError:
                return self._send(404, b'{"error": "unknown image id"}')
            except (ValueError, json.JSONDecodeError) as exc:
                return self._json({"error": str(exc)}, 400)
            return self._json(store.state())

    return Handler


def dataset_ids(images_dir: str | Path, first: int | None = None) -> list[str]:
    ids = sorted(p.stem for p in Path(images_dir).glob("*.png") if IMAGE_ID.match(p.stem))
    return ids[:first] if first else ids


def serve(
    images_dir: str | Path, labels_csv: str | Path, first: int | None = 2000, host: str = "127.0.0.1", port: int = 8765
) -> ThreadingHTTPServer:
    """Build (not start) the labelling server for the first ``first`` images of ``images_dir``."""
    ids = dataset_ids(images_dir, first)
    if not ids:
        raise FileNotFoundError(
            f"{images_dir}: no images to label; run `snakemake results/generated/latents.parquet` first"
        )
    store = LabelStore(labels_csv, ids)
    return ThreadingHTTPServer((host, port), make_handler(store, Path(images_dir)))


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
