import csv
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import wait_for
from vhuman.labeling import LabelFileError, LabelStore, read_labels, simulate_hand_labels


def ids(n):
    return [f"{i:06d}" for i in range(n)]


def test_store_labels_undo_skip_and_resume(tmp_path):
    path = tmp_path / "labels.csv"
    store = LabelStore(path, ids(5))
    assert store.state()["next"][:2] == ["000000", "000001"]
    store.label("000000", "female", "good")
    store.skip("000001")
    store.label("000002", "male", "bad")
    assert store.state()["next"] == ["000003", "000004", "000001"]  # skipped ones come back last
    assert store.undo() == ["000002"]
    table = read_labels(path)
    assert list(table["image_id"]) == ["000000"] and table["gender"][0] == "female"
    resumed = LabelStore(path, ids(5))  # a new server picks up exactly where the last one was
    assert resumed.state()["done"] == 1 and resumed.state()["next"][0] == "000001"
    with pytest.raises(KeyError):
        store.label("999999", "female", "good")
    with pytest.raises(ValueError):
        store.label("000003", "other", "good")


def test_concurrent_labels_are_all_kept(tmp_path):
    store = LabelStore(tmp_path / "labels.csv", ids(40))
    threads = [threading.Thread(target=store.label, args=(i, "female", "good")) for i in ids(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_labels(tmp_path / "labels.csv")) == 40
    assert not list(tmp_path.glob(".*.tmp"))


def test_malformed_label_files_name_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,gender,quality,labeled_at\n000000,female,good,2024\n000001,woman,good,2024\n")
    with pytest.raises(LabelFileError, match="bad.csv, line 3"):
        read_labels(bad)
    other = tmp_path / "other.csv"
    other.write_text("image_id,gender,quality,labeled_at\n123456,female,good,2024\n")
    with pytest.raises(LabelFileError, match="not among the generated images"):
        read_labels(other, known_ids=set(ids(5)))


def test_simulated_labels_flip_at_the_error_rate(tmp_path):
    n = 4000
    truth = pd.DataFrame({"image_id": ids(n), "gender": [1.0, 0.0] * (n // 2), "quality": 1.0})
    flipped = simulate_hand_labels(truth, 3000, 0.05, 0, tmp_path / "sim.csv")
    table = read_labels(tmp_path / "sim.csv")
    assert len(table) == 3000
    wrong = ((table["gender"] == "female") != (truth["gender"][:3000] > 0.5)).mean()
    assert 0.04 < wrong < 0.06 and 240 < flipped < 360


def request(url, data=None, token=None, headers=None):
    """A request as the labelling page sends it: its token, its own origin and a JSON body."""
    body = json.dumps(data).encode() if data is not None else None
    origin = "/".join(url.split("/")[:3])
    sent = {"Content-Type": "application/json", "Origin": origin}
    if token:
        sent["X-Token"] = token
    sent.update(headers or {})
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET", headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_server_binds_loopback_and_serves_only_dataset_images(label_server):
    base, srv, _ = label_server
    assert srv.server_address[0] == "127.0.0.1"
    assert request(base + "/images/000003.png", token=srv.token)[0] == 200
    for path in (
        "/images/../../etc/passwd",
        "/images/%2e%2e/%2e%2e/etc/passwd",
        "/images/000055.png",
        "/images/999999.png",
        "/etc/passwd",
        "/images/000003.png/../../labels.csv",
    ):
        assert request(base + path, token=srv.token)[0] == 404, path
    label = {"image_id": "999999", "gender": "female", "quality": "good"}
    assert request(base + "/api/label", label, srv.token)[0] == 404
    assert request(base + "/api/label", {**label, "image_id": "000001", "gender": "x"}, srv.token)[0] == 400
    status, body = request(base + "/api/label", {**label, "image_id": "000000", "gender": "male"}, srv.token)
    assert status == 200 and json.loads(body)["done"] == 1


# ---- the page in a real browser --------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server_process(images_dir, labels, port):
    """vhuman-label as a person starts it; returns the process and the URL it prints (with this start's token)."""
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("vhuman-label")),  # the installed command, as a user starts it
            "--images",
            str(images_dir),
            "--labels",
            str(labels),
            "--first",
            "60",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first_line = proc.stdout.readline()  # "Labelling page: http://127.0.0.1:PORT/?token=..."
    match = re.search(r"(http://\S+)", first_line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the labelling server did not start: {first_line!r}{proc.stdout.read()}")
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, match.group(1)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the labelling server did not start")


def test_label_50_by_keyboard_undo_kill_and_resume(browser, images_dir, tmp_path):
    from selenium.webdriver.common.by import By

    labels, port = tmp_path / "labels.csv", free_port()
    proc, url = start_server_process(images_dir, labels, port)
    try:
        browser.get(url)
        body = browser.find_element(By.TAG_NAME, "body")
        face = browser.find_element(By.ID, "face")
        wait_for(lambda: face.get_attribute("data-id") == "000000")
        given = {}
        for k in range(50):
            current = face.get_attribute("data-id")
            bad = k % 7 == 3
            if bad:
                body.send_keys("b")
            key = "f" if k % 3 else "m"
            body.send_keys(key)
            given[current] = ("female" if key == "f" else "male", "bad" if bad else "good")
            wait_for(lambda current=current: face.get_attribute("data-id") != current)
        assert "50 / 60" in browser.find_element(By.ID, "status").text
        body.send_keys("z")  # undo the 50th
        wait_for(lambda: face.get_attribute("data-id") == "000049")
        del given["000049"]
    finally:
        proc.send_signal(signal.SIGKILL)  # a killed server, not a polite shutdown
        proc.wait()
    proc, url = start_server_process(images_dir, labels, port)
    try:
        browser.get(url)  # a restart prints a new token: the person opens the new URL
        face = browser.find_element(By.ID, "face")
        wait_for(lambda: face.get_attribute("data-id") == "000049")  # resumes exactly where labelling stopped
        assert "49 / 60" in browser.find_element(By.ID, "status").text
    finally:
        proc.terminate()
        proc.wait()
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["image_id"]: (r["gender"], r["quality"]) for r in rows} == given


def test_a_confirmed_page_is_one_batch_for_undo_also_after_a_restart(tmp_path):
    path = tmp_path / "labels.csv"
    store = LabelStore(path, ids(40))
    store.label("000000", "female", "good")
    page = [(i, "male" if k % 2 else "female", "good") for k, i in enumerate(ids(17)[1:])]
    store.label_many(page)
    assert store.state()["next"][0] == "000017"
    assert list(read_labels(path)["image_id"]) == ids(17)  # written in page order
    resumed = LabelStore(path, ids(40))
    assert resumed.undo() == ids(17)[1:]  # the whole page comes back, not its last face
    assert resumed.state()["next"][0] == "000001" and resumed.undo() == ["000000"] and resumed.undo() == []
    with pytest.raises(ValueError, match="twice"):
        store.label_many([("000020", "female", "good"), ("000020", "male", "good")])
    with pytest.raises(KeyError):
        store.label_many([("000021", "female", "good"), ("999999", "male", "good")])
    assert "000021" not in store.rows  # a bad batch writes nothing


def test_the_grid_counts_how_many_guesses_the_person_kept(tmp_path):
    store = LabelStore(tmp_path / "labels.csv", ids(10))
    store.label_many([("000000", "male", "bad"), ("000001", "male", "good")])
    faces = store.grid(4)["faces"]  # no model: the most common labels so far
    assert [f["image_id"] for f in faces] == ids(6)[2:]
    assert all(f["p_female"] == 0.0 and f["p_good_quality"] == 1.0 for f in faces)
    store.label_many([("000002", "male", "good"), ("000003", "female", "good"), ("000004", "male", "bad")])
    model = store.state()["model"]
    assert (model["guesses_kept"], model["guesses_checked"]) == (1, 3)


def test_the_cnn_guess_learns_the_labels_it_is_given_in_the_background(images_dir):
    import numpy as np

    from vhuman.label_guesser import CNNGuess
    from vhuman.synthetic import PARAM_INDEX, sample_face_params

    female = sample_face_params(60, seed=2)[:, PARAM_INDEX["gender"]].numpy() > 0.5  # the images' own truth
    rows = {i: {"gender": "female" if f else "male", "quality": "good"} for i, f in zip(ids(48), female, strict=False)}
    guess = CNNGuess(images_dir, steps=300)
    guess.labels_changed(dict(list(rows.items())[:39]))
    assert guess.thread is None and guess.status()["name"] == "most common label so far"  # too few labels
    guess.labels_changed(rows)
    guess.wait(120)
    status = guess.status()
    assert status["trained_on"] == 48 and status["name"] == "gender CNN" and status["error"] is None
    p = np.array([g["p_female"] for g in guess.guesses(rows, ids(48))])
    assert ((p > 0.5) == female[:48]).mean() > 0.8  # it learnt the labels it was given
    guess.labels_changed({**rows, **{i: {"gender": "male", "quality": "good"} for i in ids(60)[48:]}})
    assert guess.thread is None  # 12 more labels: not yet worth a retrain


def test_the_grid_s_guess_takes_the_line_in_w_where_it_calls_held_out_labels_better(images_dir, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vhuman.io import vectors_column
    from vhuman.label_guesser import CNNGuess

    female = np.random.default_rng(3).random(60) < 0.5  # labels the images do not show: only w can tell
    direction = np.random.default_rng(4).standard_normal(512).astype(np.float32)
    w = np.random.default_rng(5).standard_normal((60, 512)).astype(np.float32) + 3 * np.outer(female - 0.5, direction)
    latents = tmp_path / "latents.parquet"
    pq.write_table(pa.table({"image_id": pa.array(ids(60)), "w": vectors_column(w)}), latents)
    rows = {i: {"gender": "female" if f else "male", "quality": "good"} for i, f in zip(ids(48), female, strict=False)}
    guess = CNNGuess(images_dir, steps=100, latents=latents)
    guess.labels_changed(rows)
    guess.wait(120)
    status = guess.status()
    assert status["error"] is None and status["name"] in ("line in W", "gender CNN and line in W")
    p = np.array([g["p_female"] for g in guess.guesses(rows, ids(60)[48:])])
    assert ((p > 0.5) == female[48:]).mean() >= 0.9
    pq.write_table(pa.table({"image_id": pa.array(ids(40)), "w": vectors_column(w[:40])}), latents)
    short = CNNGuess(images_dir, steps=10, latents=latents)
    short.labels_changed(rows)
    short.wait(120)
    assert "KeyError" in short.status()["error"] and "have no w" in short.status()["error"]
    assert short.thread is None  # a failed retrain waits for more labels rather than retrying at once


def test_grid_writes_the_persons_labels_survives_a_kill_and_undoes_a_page(browser, images_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    chosen = {i: ("female" if k % 3 else "male", "bad" if k % 7 == 3 else "good") for k, i in enumerate(ids(60))}
    labels, port = tmp_path / "labels.csv", free_port()

    def page_ids(previous=""):
        grid = browser.find_element(By.ID, "grid")
        wait_for(lambda: grid.get_attribute("data-ready") not in (None, previous))
        return grid.get_attribute("data-ready").split(",")

    def correct(page):
        """Click only what the guess got wrong (the grid redraws after each click, so tiles are found anew)."""
        for i in page:
            tile = lambda i=i: browser.find_element(By.CSS_SELECTOR, f".tile[data-id='{i}']")  # noqa: E731
            if tile().get_attribute("data-gender") != chosen[i][0]:
                tile().click()
            if tile().get_attribute("data-quality") != chosen[i][1]:
                tile().find_element(By.CLASS_NAME, "quality").click()
            assert (tile().get_attribute("data-gender"), tile().get_attribute("data-quality")) == chosen[i]

    def confirm(page):
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)
        return page_ids(",".join(page))

    proc, url = start_server_process(images_dir, labels, port)
    try:
        browser.get(url.replace("/?token=", "/grid?token="))
        page = page_ids()
        assert page == ids(30)  # the first faces, in order
        correct(page)
        page = confirm(page)
        assert page == ids(60)[30:]
        correct(page[:5])  # half-way through a page...
    finally:
        proc.send_signal(signal.SIGKILL)  # ...the server dies
        proc.wait()
    assert list(read_labels(labels)["image_id"]) == ids(30)
    proc, url = start_server_process(images_dir, labels, port)
    try:
        browser.get(url.replace("/?token=", "/grid?token="))
        page = page_ids()
        assert page == ids(60)[30:]  # the unconfirmed page comes back
        correct(page)
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)
        wait_for(lambda: "all done" in browser.find_element(By.ID, "status").text)
        assert len(read_labels(labels)) == 60
        browser.find_element(By.TAG_NAME, "body").send_keys("z")  # undo takes the last page back whole
        assert page_ids() == page
        assert len(read_labels(labels)) == 30
        correct(page)
        browser.find_element(By.ID, "confirm").click()
        wait_for(lambda: "all done" in browser.find_element(By.ID, "status").text)
    finally:
        proc.terminate()
        proc.wait()
    table = read_labels(labels)
    assert list(table["image_id"]) == ids(60)  # the first N, in order
    assert {r.image_id: (r.gender, r.quality) for r in table.itertuples()} == chosen
