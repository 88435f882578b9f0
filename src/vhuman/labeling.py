"""Stage 2a: hand labels of gender and image quality, and the local web page to make them.

The labels live in one CSV (image_id, gender, quality, labeled_at); gender is ``female`` or ``male``, quality
``good`` or ``bad``. Every change rewrites the whole file through a temporary file, fsync and rename, under a lock,
so a killed server or two open tabs never lose or tear a label. A label that a later one replaced is kept beside
it (``<name>.replaced.csv``, with the time it was replaced), so undo restores it instead of leaving the image
unlabelled, also after a restart.

Start the page with ``vhuman-label --images results/generated/images --labels data/labels/manual_labels.csv``. It
has two modes: one face at a time (one key per face), and a grid of the next faces pre-filled with a model's guess
in which the person clicks only the wrong ones and confirms the page. Both label the first images in order and write
the same CSV. The server's safety rules are vhuman.webserver's.
"""

from __future__ import annotations

import csv
import os
import re
import threading
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from vhuman.atomic import atomic_path, remove_stale_temporaries
from vhuman.webserver import LocalServer, PageHandler, file_inside, local_server, page, whole_number

COLUMNS = ("image_id", "gender", "quality", "labeled_at")
REPLACED_COLUMNS = (*COLUMNS, "replaced_at")
GENDERS = ("female", "male")
QUALITIES = ("good", "bad")
IMAGE_ID = re.compile(r"[0-9]{6}")  # with fullmatch: exactly six ASCII digits, no trailing newline


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


def write_labels(path: str | Path, rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> None:
    """Write the whole CSV durably: temporary file, fsync, rename, fsync of the folder."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def replaced_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.replaced.csv")


def read_replaced(path: Path, known: set[str]) -> list[dict]:
    """The labels later ones replaced (``REPLACED_COLUMNS``); rows of other images or another shape are ignored."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if set(r) == set(REPLACED_COLUMNS) and r["image_id"] in known]


class MajorityGuess:
    """The grid's guess before (or without) a trained model: every face gets the most common labels so far."""

    def guesses(self, rows: dict[str, dict], image_ids: list[str]) -> list[dict]:
        genders = [r["gender"] for r in rows.values()]
        female = genders.count("female") >= genders.count("male")
        bad = [r["quality"] for r in rows.values()].count("bad") > len(rows) / 2
        p = {"p_female": 1.0 if female else 0.0, "p_good_quality": 0.0 if bad else 1.0}
        return [{"image_id": i, **p} for i in image_ids]

    def status(self) -> dict:
        return {"name": "most common label so far", "trained_on": 0, "training": False}

    def labels_changed(self, rows: dict[str, dict]) -> None:
        pass


class LabelStore:
    """The labels of one image set, in memory and on disk; thread-safe.

    A page of the grid is confirmed as one batch: its rows share one ``labeled_at`` and undo takes the whole batch
    back, also after a restart (single labels each have their own time)."""

    def __init__(self, csv_path: str | Path, image_ids: list[str], guesser=None):
        self.path = Path(csv_path)
        remove_stale_temporaries(self.path)  # left by a server killed mid-write
        self.image_ids = list(image_ids)
        self.known = set(self.image_ids)
        table = read_labels(self.path, self.known)
        # Insertion order is labelling order, which undo walks back; a stable sort keeps a batch in page order.
        self.rows: dict[str, dict] = {
            r["image_id"]: dict(r) for r in table.sort_values("labeled_at", kind="stable").to_dict("records")
        }
        self.replaced = read_replaced(replaced_path(self.path), self.known)
        self.skipped: list[str] = []
        self.lock = threading.Lock()
        self.started = time.time()
        self.done_at_start = len(self.rows)
        self.guesser = guesser or MajorityGuess()
        self.guesser.labels_changed(dict(self.rows))
        # The grid's guesses as served, to count how often the person kept them.
        self.served: dict[str, tuple[str, str]] = {}
        self.kept, self.checked = 0, 0

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
                "model": {**self.guesser.status(), "guesses_kept": self.kept, "guesses_checked": self.checked},
            }

    def grid(self, count: int) -> dict:
        """The next ``count`` faces to label, in order, each with the guesser's p_female and p_good_quality."""
        with self.lock:
            ids, rows = self._next(count), dict(self.rows)
        faces = self.guesser.guesses(rows, ids)
        with self.lock:
            for f in faces:
                guess = ("female" if f["p_female"] >= 0.5 else "male", "good" if f["p_good_quality"] >= 0.5 else "bad")
                self.served[f["image_id"]] = guess
        return {**self.state(), "faces": faces}

    def _now(self) -> str:
        """The time of a new label, later than every label so far (batches are told apart by their time)."""
        now = datetime.now(UTC)
        if self.rows:
            try:
                last = datetime.fromisoformat(next(reversed(self.rows.values()))["labeled_at"])
                now = max(now, last + timedelta(microseconds=1))
            except (ValueError, TypeError):  # a hand-edited time, or one without a zone: not comparable
                pass
        return now.isoformat(timespec="microseconds")

    def label_many(self, labels: list[tuple[str, str, str]]) -> None:
        """Label (image_id, gender, quality) triples as one batch, in one durable write."""
        for image_id, gender, quality in labels:
            if image_id not in self.known:
                raise KeyError(image_id)
            if gender not in GENDERS or quality not in QUALITIES:
                raise ValueError(f"gender must be one of {GENDERS}, quality one of {QUALITIES}")
        if len({i for i, _, _ in labels}) != len(labels):
            raise ValueError("an image appears twice in one batch")
        with self.lock:
            when = self._now()
            earlier = [{**self.rows[i], "replaced_at": when} for i, _, _ in labels if i in self.rows]
            if earlier:  # kept first: a crash before the labels' write leaves only an entry no undo asks for
                self.replaced += earlier
                write_labels(replaced_path(self.path), self.replaced, REPLACED_COLUMNS)
            for image_id, gender, quality in labels:
                self.rows.pop(image_id, None)
                self.rows[image_id] = {"image_id": image_id, "gender": gender, "quality": quality, "labeled_at": when}
                if image_id in self.skipped:
                    self.skipped.remove(image_id)
                if image_id in self.served:
                    self.checked += 1
                    self.kept += self.served.pop(image_id) == (gender, quality)
            write_labels(self.path, list(self.rows.values()))
            rows = dict(self.rows)
        self.guesser.labels_changed(rows)

    def label(self, image_id: str, gender: str, quality: str) -> None:
        self.label_many([(image_id, gender, quality)])

    def undo(self) -> list[str]:
        """Take back the last batch (one label, or one confirmed page): each of its images gets back the label it
        replaced, or none if it had none. Returns the batch's image ids."""
        with self.lock:
            if not self.rows:
                return []
            when = next(reversed(self.rows.values()))["labeled_at"]
            batch = [i for i, r in self.rows.items() if r["labeled_at"] == when]
            for image_id in batch:
                del self.rows[image_id]
            restored = [r for r in self.replaced if r["replaced_at"] == when]
            for row in restored:
                self.rows[row["image_id"]] = {k: row[k] for k in COLUMNS}
            if restored:  # back to labelling order, which the next undo walks
                self.rows = dict(sorted(self.rows.items(), key=lambda item: item[1]["labeled_at"]))
            write_labels(self.path, list(self.rows.values()))
            if restored:
                self.replaced = [r for r in self.replaced if r["replaced_at"] != when]
                write_labels(replaced_path(self.path), self.replaced, REPLACED_COLUMNS)
            return batch

    def skip(self, image_id: str) -> None:
        if image_id not in self.known:
            raise KeyError(image_id)
        with self.lock:
            if image_id in self.skipped:
                self.skipped.remove(image_id)
            self.skipped.append(image_id)


def _image_id(value) -> str:
    if not isinstance(value, str) or not IMAGE_ID.fullmatch(value):
        raise ValueError(f"image_id must be six digits, got {str(value)[:20]!r}")
    return value


def _page_labels(body: dict) -> list[tuple[str, str, str]]:
    labels = body.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, dict) for x in labels):
        raise ValueError("labels must be a list of {image_id, gender, quality}")
    return [(_image_id(x.get("image_id")), x.get("gender"), x.get("quality")) for x in labels]


def make_handler(store: LabelStore, images_dir: Path):
    """The labelling server's routes: the single-face page (/), the grid (/grid), the state, images and labels."""

    class Handler(PageHandler):
        def do_GET(self):
            self.answer(self.get)

        def do_POST(self):
            self.answer(self.post)

        def get(self):
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            self.check(query.get("token", [None])[0])
            pages = {"/": "label.html", "/grid": "label_grid.html"}
            if url.path in pages:
                return self.send_body(200, page(pages[url.path], self.token), "text/html; charset=utf-8")
            if url.path == "/api/state":
                return self.send_json(store.state())
            if url.path == "/api/grid":
                return self.send_json(store.grid(whole_number(query.get("count", ["30"])[0], "count", 1, 64)))
            m = re.fullmatch(r"/images/([0-9]{6})\.png", url.path)
            # Only ids of this dataset, and only files inside the image folder: no other path reaches the disk.
            path = file_inside(images_dir, f"{m.group(1)}.png") if m and m.group(1) in store.known else None
            if path is not None:
                return self.send_body(200, path.read_bytes(), "image/png")
            return self.send_body(404, b'{"error": "not found"}')

        def post(self):
            self.check(changes_state=True)
            body = self.read_body()
            try:
                if self.path == "/api/label":
                    store.label(_image_id(body.get("image_id")), body.get("gender"), body.get("quality"))
                elif self.path == "/api/label_page":
                    store.label_many(_page_labels(body))
                elif self.path == "/api/skip":
                    store.skip(_image_id(body.get("image_id")))
                elif self.path == "/api/undo":
                    store.undo()
                else:
                    return self.send_body(404, b'{"error": "not found"}')
            except KeyError:
                return self.send_body(404, b'{"error": "unknown image id"}')
            except ValueError as exc:
                return self.send_json({"error": str(exc)}, 400)
            return self.send_json(store.state())

    return Handler


def dataset_ids(images_dir: str | Path, first: int | None = None) -> list[str]:
    ids = sorted(p.stem for p in Path(images_dir).glob("*.png") if IMAGE_ID.fullmatch(p.stem) and p.is_file())
    return ids[:first] if first else ids


def serve(
    images_dir: str | Path,
    labels_csv: str | Path,
    first: int | None = 2000,
    host: str = "127.0.0.1",
    port: int = 8765,
    guesser=None,
) -> LocalServer:
    """Build (not start) the labelling server for the first ``first`` images of ``images_dir``; its ``url`` carries
    this start's secret token. ``guesser`` pre-fills the grid (see vhuman.label_guesser); without one the grid
    guesses the most common labels."""
    ids = dataset_ids(images_dir, first)
    if not ids:
        raise FileNotFoundError(
            f"{images_dir}: no images to label; run `snakemake results/generated/latents.parquet` first"
        )
    store = LabelStore(labels_csv, ids, guesser)
    server = local_server(host, port, lambda: make_handler(store, Path(images_dir)))
    server.store = store
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
