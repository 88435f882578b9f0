"""Key presses and clicks per 100 hand labels, one face at a time against the grid of guesses, in Chromium.

A scripted person labels the first N images with their true gender and quality: the world's truth in a run of the
embedded default, or a labels CSV (the stand-in's on real faces, whose calls the grid's CNN then has to learn).
Like a person, it makes a mistake on 5 % of the faces and corrects it at once (one face at a time: the wrong key,
undo, the right keys; grid: a wrong click, clicked back). In the grid it clicks only the tiles whose guess is wrong
and confirms each page with Enter; before each page it waits for a running retrain to finish (a person takes longer
over a page than the ~20 s a retrain takes).

    python benchmarks/bench_labeling.py --images results/generated/images --truth results/generated/truth.parquet
    python benchmarks/bench_labeling.py --images results/generated/images --truth data/labels/stand_in.csv \
        --labels 1000
"""

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from vhuman.label_guesser import CNNGuess
from vhuman.labeling import read_labels, serve


def chromium(width=1300, height=1000):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options
    )


def wait_for(predicate, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError("the page did not answer")


def single_mode(browser, truth, slips) -> int:
    """One face at a time; returns the keys pressed."""
    body, face, keys = browser.find_element(By.TAG_NAME, "body"), browser.find_element(By.ID, "face"), 0

    def press(key, changes_face):
        nonlocal keys
        before = face.get_attribute("data-id")
        body.send_keys(key)
        keys += 1
        if changes_face:
            wait_for(lambda: face.get_attribute("data-id") != before)

    wait_for(lambda: face.get_attribute("data-id"))
    while face.get_attribute("data-id"):
        gender, quality = truth[face.get_attribute("data-id")]
        if slips.pop():  # the wrong gender key, then undo
            press("m" if gender == "female" else "f", True)
            press("z", True)
        if quality == "bad":
            press("b", False)
        press("f" if gender == "female" else "m", True)
    return keys


def grid_mode(browser, truth, slips, guesser, screenshot=None) -> int:
    """Pages of guesses; returns the clicks and keys. ``screenshot``: a PNG of the page half-way."""
    actions, previous, pages = 0, "", 0

    def ready():
        return browser.find_element(By.ID, "grid").get_attribute("data-ready")

    while True:
        guesser.wait()
        browser.refresh()  # the page asks for guesses from the newest model
        page = wait_for(lambda: (ready(),) if ready() is not None else None)[0]
        if not page.strip(","):
            return actions
        if page == previous:
            raise RuntimeError("the page did not move on")
        pages += 1
        if screenshot and pages * len(page.split(",")) >= len(truth) // 2:
            time.sleep(0.5)  # the images load
            browser.save_screenshot(screenshot)
            screenshot = None
        for i in page.split(","):
            tile = lambda i=i: browser.find_element(By.CSS_SELECTOR, f".tile[data-id='{i}']")  # noqa: E731
            if slips.pop():  # a click on the wrong face, clicked back
                tile().click()
                tile().click()
                actions += 2
            if tile().get_attribute("data-gender") != truth[i][0]:
                tile().click()
                actions += 1
            if tile().get_attribute("data-quality") != truth[i][1]:
                tile().find_element(By.CLASS_NAME, "quality").click()
                actions += 1
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)
        actions += 1
        wait_for(lambda p=page: ready() != p)
        previous = page


def run(mode, args, truth) -> dict:
    folder = Path(tempfile.mkdtemp())
    guesser = CNNGuess(args.images, latents=args.latents or None)
    server = serve(args.images, folder / "labels.csv", args.labels, port=0, guesser=guesser)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    slips = list(np.random.default_rng(args.seed).random(args.labels * 2) < args.slip_rate)
    browser = chromium()
    start = time.time()
    try:
        browser.get(server.url if mode == "single" else server.url.replace("/?token=", "/grid?token="))
        if mode == "single":
            actions = single_mode(browser, truth, slips)
        else:
            actions = grid_mode(browser, {i: truth[i] for i in server.store.image_ids}, slips, guesser, args.screenshot)
    finally:
        browser.quit()
        server.shutdown()
    written = read_labels(folder / "labels.csv")
    right = sum(truth[r.image_id] == (r.gender, r.quality) for r in written.itertuples())
    return {
        "mode": mode,
        "labels": len(written),
        "labels_as_the_person_meant": right,
        "actions": actions,
        "actions_per_100_labels": round(100 * actions / len(written), 1),
        "guesses": server.store.state()["model"],
        "script_seconds": round(time.time() - start, 1),
    }


def read_truth(path: Path) -> dict[str, tuple[str, str]]:
    """image id -> (gender, quality) from the world's truth (Parquet) or a labels CSV."""
    if path.suffix == ".csv":
        return {r.image_id: (r.gender, r.quality) for r in read_labels(path).itertuples()}
    return {
        r.image_id: ("female" if r.gender > 0.5 else "male", "good" if r.quality > 0.5 else "bad")
        for r in pd.read_parquet(path).itertuples()
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="results/generated/images")
    ap.add_argument("--truth", default="results/generated/truth.parquet")
    ap.add_argument("--labels", type=int, default=2000, help="label the first N images")
    ap.add_argument(
        "--latents", default="results/generated/latents.parquet", help="w of every face for the grid's line ('': none)"
    )
    ap.add_argument("--slip-rate", type=float, default=0.05, help="share of faces the person first gets wrong")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="single,grid")
    ap.add_argument("--screenshot", help="PNG of the grid at the end")
    ap.add_argument("--out", help="JSON file for the figures")
    args = ap.parse_args()
    truth = read_truth(Path(args.truth))
    if len(truth) < args.labels:
        raise SystemExit(f"{args.truth} holds {len(truth)} faces, fewer than --labels {args.labels}")
    results = [run(mode, args, truth) for mode in args.modes.split(",")]
    for r in results:
        print(
            f"{r['mode']:>6}: {r['actions_per_100_labels']:6.1f} key presses and clicks per 100 labels "
            f"({r['labels_as_the_person_meant']}/{r['labels']} labels as meant; script {r['script_seconds']} s)"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
