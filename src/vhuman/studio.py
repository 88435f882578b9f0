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
from vhuman.webserver import LocalServer, PageHandler, Refused, local_server, page, read_json_object

MAX_SEED = 2**63 - 1
SWEEP_FRAMES = 9
SAVED_NAME = re.compile(r"^[a-z0-9_.-]+\.(png|gif)$")


class Stale(Exception):
    """A draw request that a newer one has overtaken; it is dropped unanswered."""


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)  # speed over size: the page is local
    return buf.getvalue()


class Studio:
    """The fine-tuned generator behind the page: checks requests, draws, reads back, saves."""

    def __init__(self, checkpoint: str | Path, out_dir: str | Path, device: str = "cpu"):
        self.checkpoint, self.out_dir, self.device = Path(checkpoint), Path(out_dir), torch.device(device)
        self.model = None
        self.error: str | None = None
        self.lock = threading.Lock()
        self.newest = 0  # the highest request number seen: older draws are stale
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

    def draw(self, seed: int, c: torch.Tensor, loop: str, request: int | None = None):
        """Images [N, H, W, 3] uint8 for the rows of ``c`` (one face, seed ``seed``) and the critic's readings
        [N, properties + 1] (the last column p(female)); None without a critic."""
        if request is not None:
            self.newest = max(self.newest, request)
        with self.lock, torch.inference_mode():
            if request is not None and request < self.newest:
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
        request = body.get("request")
        images, read = self.draw(seed, c, loop, request if isinstance(request, int) else None)
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
            url = urllib.parse.urlsplit(self.path)
            try:
                self.check(urllib.parse.parse_qs(url.query).get("token", [None])[0])
            except Refused as exc:
                return self.send_json({"error": str(exc)}, exc.code)
            if url.path == "/":
                return self.send_body(200, page("studio.html", self.token), "text/html; charset=utf-8")
            if url.path == "/api/info":
                return self.send_json(studio.info())
            name = url.path.removeprefix("/files/")
            # Only files the studio wrote, by their bare names: no other path reaches the disk.
            if url.path.startswith("/files/") and SAVED_NAME.match(name) and (studio.out_dir / name).is_file():
                ctype = "image/png" if name.endswith(".png") else "image/gif"
                return self.send_body(200, (studio.out_dir / name).read_bytes(), ctype, filename=name)
            return self.send_body(404, b'{"error": "not found"}')

        def do_POST(self):
            actions = {
                "/api/draw": studio.draw_reply,
                "/api/save_png": studio.save_face,
                "/api/save_gif": studio.save_sweep,
            }
            try:
                self.check(changes_state=True)
                body = read_json_object(self.headers, self.rfile)
                if self.path not in actions:
                    return self.send_body(404, b'{"error": "not found"}')
                result = actions[self.path](body)
            except Refused as exc:
                return self.send_json({"error": str(exc)}, exc.code)
            except Stale:
                return self.send_json({"error": "overtaken by a newer request"}, 409)
            except ValueError as exc:
                return self.send_json({"error": str(exc)}, 400)
            except Exception as exc:  # the page shows a message, never a dead connection
                return self.send_json({"error": f"{type(exc).__name__}: {exc}"}, 500)
            if isinstance(result, Path):
                result = {"saved": str(result), "url": f"/files/{result.name}"}
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
