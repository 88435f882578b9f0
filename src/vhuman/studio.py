"""The studio: a live control page for the fine-tuned generator (``vhuman-studio``).

One slider per property redraws the face as it moves; beside each slider, the value the fine-tune's critic reads
back off the drawn face. A switch picks open loop (one synthesis) or the closed loop the checkpoint records. The
current face saves as PNG and a sweep of one property as GIF, into the output folder. The server is the labelling
page's kind (vhuman.webserver): this machine only, a secret token per start.

A checkpoint that is missing or wrong does not stop the server: the page shows the message, and reloading the page
tries the file again (so running the fine-tune meanwhile is enough).
"""

from __future__ import annotations

import base64
import io
import math
import re
import threading
import time
import urllib.parse
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vhuman.conditional import load_conditional_generator
from vhuman.directions import critic_reading
from vhuman.io import CheckpointError, save_png, to_uint8
from vhuman.latents import latent_for_seed
from vhuman.pictures import save_gif
from vhuman.vocabulary import MEANINGS, PROPERTY_NAMES, RANGES
from vhuman.webserver import LocalServer, PageHandler, file_inside, local_server, page

MAX_SEED = 2**63 - 1
MAX_REQUEST = 2**53  # a page counts its draws in a JavaScript number
MAX_PAGES = 256  # page loads whose newest request is remembered
PAGE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
SWEEP_FRAMES = 9  # a GIF of a sweep is 16 frames, about 350 kB at 64x64: saves are kept, never pruned
SAVED_NAME = re.compile(r"[a-z0-9_.-]+\.(png|gif)")


class Stale(Exception):
    """A draw request that a newer one has overtaken; it is dropped unanswered."""


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)  # speed over size: the page is local
    return buf.getvalue()


def request_of(body: dict) -> tuple[str, int] | None:
    """(page id, request number) of a draw; None when the body names neither (then it is never stale)."""
    page_id, number = body.get("page"), body.get("request")
    if page_id is None and number is None:
        return None
    if not isinstance(page_id, str) or not PAGE_ID.fullmatch(page_id):
        raise ValueError("page must be the page's id: 1 to 64 letters, digits or dashes")
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_REQUEST:
        raise ValueError(f"request must be a whole number from 0 to {MAX_REQUEST}")
    return page_id, number


class Studio:
    """The fine-tuned generator behind the page: checks requests, draws, reads back, saves."""

    def __init__(self, checkpoint: str | Path, out_dir: str | Path, device: str = "cpu"):
        self.checkpoint, self.out_dir, self.device = Path(checkpoint), Path(out_dir), torch.device(device)
        self.model = None
        self.error: str | None = None
        self.lock, self.lock_pages = threading.Lock(), threading.Lock()
        # Per page load (the page's own random id): the highest request number seen; older draws are stale. Each
        # page counts on its own, so a reload, a second tab or an absurd number stalls no other page.
        self.newest: OrderedDict[str, int] = OrderedDict()
        self.load()

    def load(self) -> None:
        """(Re)open the checkpoint; a failure is kept as the message the page shows."""
        if not self.checkpoint.is_file():
            self.model = None
            self.error = (
                f"{self.checkpoint} not found: run `make run` (or `snakemake results/finetuned.pth`) first, "
                "or start vhuman-studio with --checkpoint pointing at a fine-tuned generator"
            )
            return
        try:
            model = load_conditional_generator(self.checkpoint).to(self.device)
        except (CheckpointError, FileNotFoundError, OSError, KeyError, RuntimeError) as exc:
            self.model, self.error = None, str(exc)
            return
        self.model, self.error = model, None
        loop = model.closed_loop
        self.loop_steps = loop.steps if loop is not None else 0
        self.critic = loop.critic if loop is not None else None

    def info(self) -> dict:
        if self.model is None:
            self.load()
        if self.model is None:
            return {"error": self.error}
        return {
            "checkpoint": str(self.checkpoint),
            "resolution": self.model.resolution,
            "closed_loop_steps": self.loop_steps,
            "reads_back": self.critic is not None,
            "properties": [
                {
                    "name": n,
                    "low": RANGES[n][0],
                    "high": RANGES[n][1],
                    "meaning": MEANINGS[n],
                    "default": sum(RANGES[n]) / 2,
                }
                for n in PROPERTY_NAMES
            ],
        }

    def parse(self, body: dict) -> tuple[int, torch.Tensor, str]:
        """(seed, property vector, loop) of a request; ValueError says what is wrong in the person's words."""
        if self.model is None:
            raise ValueError(self.error or "no fine-tuned generator loaded")
        seed = body.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"the seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
        values = body.get("values")
        if not isinstance(values, dict):
            raise ValueError("values must map every property to a number")
        c = []
        for name in PROPERTY_NAMES:
            value, (lo, hi) = values.get(name), RANGES[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name}: give a number from {lo:g} to {hi:g}, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be from {lo:g} to {hi:g}, got {value:g}")
            c.append(float(value))
        loop = body.get("loop", "open")
        if loop not in ("open", "closed"):
            raise ValueError(f"loop must be 'open' or 'closed', got {loop!r}")
        if loop == "closed" and self.loop_steps == 0:
            raise ValueError(f"{self.checkpoint} records no closed loop; draw open loop")
        return seed, torch.tensor([c]), loop

    def note_request(self, page_id: str, request: int) -> None:
        with self.lock_pages:
            self.newest[page_id] = max(self.newest.pop(page_id, request), request)
            while len(self.newest) > MAX_PAGES:
                self.newest.popitem(last=False)

    def draw(self, seed: int, c: torch.Tensor, loop: str, request: tuple[str, int] | None = None):
        """Images [N, H, W, 3] uint8 for the rows of ``c`` (one face, seed ``seed``) and the critic's readings
        [N, properties + 1] (the last column p(female)); None without a critic. ``request`` is (page id, number):
        a draw that a newer one of the same page has overtaken raises Stale."""
        if request is not None:
            self.note_request(*request)
        with self.lock, torch.inference_mode():
            if request is not None and request[1] < self.newest.get(request[0], request[1]):
                raise Stale()
            if self.model.closed_loop is not None:
                self.model.closed_loop.steps = self.loop_steps if loop == "closed" else 0
            z = latent_for_seed(seed, self.model.z_dim).to(self.device).expand(len(c), -1)
            images = self.model(z, c.to(self.device))
            read = None
            if self.critic is not None:
                read = critic_reading(self.critic, images, len(PROPERTY_NAMES) + 1).float().cpu().numpy()
        return to_uint8(images.float().cpu()), read

    def draw_reply(self, body: dict) -> dict:
        start = time.perf_counter()
        seed, c, loop = self.parse(body)
        images, read = self.draw(seed, c, loop, request_of(body))
        reply = {"image": "data:image/png;base64," + base64.b64encode(png_bytes(images[0])).decode(), "seed": seed}
        if read is not None:
            reply["read_back"] = dict(zip(PROPERTY_NAMES, map(float, read[0][:-1]), strict=True))
            reply["p_female"] = float(read[0][-1])
        reply["server_ms"] = round(1000 * (time.perf_counter() - start), 1)
        return reply

    def _name(self, seed: int, loop: str, what: str, ext: str) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
        return self.out_dir / f"seed{seed}_{loop}_{what}_{stamp}.{ext}"

    def save_face(self, body: dict) -> Path:
        seed, c, loop = self.parse(body)
        path = self._name(seed, loop, "face", "png")
        save_png(self.draw(seed, c, loop)[0][0], path)
        return path

    def save_sweep(self, body: dict) -> Path:
        """A GIF of the face while one property runs from its low end to its high end and back."""
        seed, c, loop = self.parse(body)
        name = body.get("sweep")
        if name not in PROPERTY_NAMES:
            raise ValueError(f"sweep: pick one of {', '.join(PROPERTY_NAMES)}, got {name!r}")
        values = torch.linspace(*RANGES[name], SWEEP_FRAMES)
        c = c.repeat(2 * SWEEP_FRAMES - 2, 1)
        c[:, PROPERTY_NAMES.index(name)] = torch.cat([values, values.flip(0)[1:-1]])
        path = self._name(seed, loop, name, "gif")
        frames = self.draw(seed, c, loop)[0]
        save_gif(frames, path, scale=max(1, 256 // frames.shape[1]), ms=120)
        return path


def make_handler(studio: Studio):
    class Handler(PageHandler):
        def do_GET(self):
            self.answer(self.get)

        def do_POST(self):
            self.answer(self.post)

        def get(self):
            url = urllib.parse.urlsplit(self.path)
            self.check(urllib.parse.parse_qs(url.query).get("token", [None])[0])
            if url.path == "/":
                return self.send_body(200, page("studio.html", self.token), "text/html; charset=utf-8")
            if url.path == "/api/info":
                return self.send_json(studio.info())
            name = url.path.removeprefix("/files/")
            # Only files the studio wrote, by their bare names, inside its folder: no other path reaches the disk.
            path = (
                file_inside(studio.out_dir, name)
                if url.path.startswith("/files/") and SAVED_NAME.fullmatch(name)
                else None
            )
            if path is not None:
                ctype = "image/png" if name.endswith(".png") else "image/gif"
                return self.send_body(200, path.read_bytes(), ctype, filename=name)
            return self.send_body(404, b'{"error": "not found"}')

        def post(self):
            actions = {
                "/api/draw": studio.draw_reply,
                "/api/save_png": studio.save_face,
                "/api/save_gif": studio.save_sweep,
            }
            self.check(changes_state=True)
            body = self.read_body()
            if self.path not in actions:
                return self.send_body(404, b'{"error": "not found"}')
            try:
                result = actions[self.path](body)
            except Stale:
                return self.send_json({"error": "overtaken by a newer request"}, 409)
            except ValueError as exc:
                return self.send_json({"error": str(exc)}, 400)
            if isinstance(result, Path):  # the page learns the name within --out, not where --out is
                result = {"saved": result.name, "url": f"/files/{result.name}"}
            return self.send_json(result)

    return Handler


def serve_studio(
    checkpoint: str | Path, out_dir: str | Path, host: str = "127.0.0.1", port: int = 8766, device: str = "cpu"
) -> LocalServer:
    """Build (not start) the studio server; its ``url`` carries this start's secret token."""
    studio = Studio(checkpoint, out_dir, device)
    server = local_server(host, port, lambda: make_handler(studio))
    server.studio = studio
    return server
