"""Latency of the studio page: from a slider's change to the new face on screen, in Chromium.

A slider is moved one step at a time (a key press, as a person would), each time waiting for the face; the page
itself times every change (``window.vhLatencies``). Open and closed loop, for the checkpoint given (the embedded
default: ``results/finetuned.pth``, 64x64) and for a fine-tuned file at the real configuration's size (GenForce
StyleGAN 256x256, critic at 128, latent model with 5 steps: random weights, built here).

    python benchmarks/bench_studio.py --checkpoint results/finetuned.pth
    python benchmarks/bench_studio.py --checkpoint results/finetuned.pth --no-real-size --moves 10 \
        --screenshot docs/images/studio_real.png   # a real-face run's file
"""

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from vhuman.conditional import ConditionalMapping, LatentPropertyModel, save_conditional_generator
from vhuman.directions import ClosedLoop
from vhuman.regressor import PropertyRegressor
from vhuman.studio import serve_studio
from vhuman.stylegan import StyleGANGenerator
from vhuman.vocabulary import PROPERTY_NAMES


def random_real_size_checkpoint(path: Path) -> Path:
    """A fine-tuned file shaped like the real configuration's, with random weights (timing only)."""
    torch.manual_seed(0)
    base = StyleGANGenerator(256)
    rows = len(PROPERTY_NAMES) + 1
    directions = {"weights": torch.randn(rows, 512) * 0.05, "bias": torch.zeros(rows), "fixed_targets": torch.ones(1)}
    n = len(PROPERTY_NAMES)
    mapping = ConditionalMapping(base, n, torch.full((n,), 0.5), torch.full((n,), 0.2), directions)
    low, high = torch.tensor([-1.0 if r == "face_pose" else 0.0 for r in PROPERTY_NAMES] + [0.0]), torch.ones(rows)
    mapping.attach_latent_model(LatentPropertyModel(base.num_layers, base.w_dim, 128, low, high), 5)
    loop = ClosedLoop(PropertyRegressor(32, 128), directions["weights"], directions["fixed_targets"], 2, None, 14)
    save_conditional_generator(path, base, mapping, torch.nn.Linear(1, 1), loop, {}, {"base_sha256": "random"})
    return path


def measure(checkpoint: Path, moves: int, screenshot: str | None = None) -> dict:
    server = serve_studio(checkpoint, tempfile.mkdtemp(), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    browser = webdriver.Chrome(service=service, options=options)
    figures = {"checkpoint": str(checkpoint), "resolution": server.studio.model.resolution}
    try:
        browser.get(server.url)
        face = browser.find_element(By.ID, "face")
        for loop in ("open", "closed"):
            browser.find_element(By.CSS_SELECTOR, f"input[name=loop][value={loop}]").click()
            time.sleep(2)  # the redraw of the switch, and a warm-up
            slider = browser.find_element(By.ID, "slider_eyes")
            browser.execute_script("window.vhLatencies = []")
            for k in range(moves):
                before = face.get_attribute("data-request")
                slider.send_keys(Keys.ARROW_RIGHT if (k // 20) % 2 == 0 else Keys.ARROW_LEFT)
                deadline = time.time() + 30
                while face.get_attribute("data-request") == before and time.time() < deadline:
                    time.sleep(0.005)
            got = browser.execute_script("return window.vhLatencies")
            page, server_ms = np.array([g["ms"] for g in got]), np.array([g["server_ms"] for g in got])
            figures[loop] = {
                "moves": len(got),
                "median_ms": round(float(np.median(page)), 1),
                "p90_ms": round(float(np.percentile(page, 90)), 1),
                "server_median_ms": round(float(np.median(server_ms)), 1),
            }
        if screenshot:
            browser.set_window_size(1300, 1000)
            time.sleep(1)
            browser.save_screenshot(screenshot)
    finally:
        browser.quit()
        server.shutdown()
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="results/finetuned.pth", help="the embedded default's fine-tuned file")
    ap.add_argument("--moves", type=int, default=40, help="slider steps per loop mode")
    ap.add_argument("--no-real-size", action="store_true", help="skip the 256x256 random-weights file")
    ap.add_argument("--out", help="JSON file for the figures")
    ap.add_argument("--screenshot", help="PNG of the page with the checkpoint's face, after the moves")
    args = ap.parse_args()
    results = [measure(Path(args.checkpoint), args.moves, args.screenshot)]
    if not args.no_real_size:
        results.append(measure(random_real_size_checkpoint(Path(tempfile.mkdtemp()) / "real.pth"), args.moves))
    for r in results:
        for loop in ("open", "closed"):
            f = r[loop]
            print(
                f"{r['resolution']}x{r['resolution']} {loop:>6} loop: slider to face {f['median_ms']} ms median, "
                f"{f['p90_ms']} ms p90 (server {f['server_median_ms']} ms; {f['moves']} moves; "
                f"{torch.get_num_threads()} threads)"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
