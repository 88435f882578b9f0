"""The studio: the live control page of a fine-tuned generator, its checks, and the page in a real browser."""

import json
import shutil
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from tests.conftest import default_config, wait_for
from vhuman.conditional import ConditionalMapping, load_conditional_generator, save_conditional_generator
from vhuman.directions import ClosedLoop
from vhuman.io import CheckpointError
from vhuman.regressor import RegressorSettings, load_regressor, train_regressor
from vhuman.studio import Stale, Studio, serve_studio
from vhuman.vocabulary import PROPERTY_NAMES


@pytest.fixture(scope="module")
def checkpoint(base, world, directions, world_on_disk, tmp_path_factory):
    """A fine-tuned file with the directions edit as its mapping and a critic trained on the world's faces."""
    folder, table, labels = world_on_disk
    out = tmp_path_factory.mktemp("studio_model")
    settings = RegressorSettings(**{**default_config()["finetune"]["regressor"], "steps": 300, "width": 8})
    train_regressor(folder, table, labels, settings, out / "critic.pth", None, False)
    values = torch.tensor(world[0][list(PROPERTY_NAMES)].to_numpy(np.float32))
    mapping = ConditionalMapping(base, len(PROPERTY_NAMES), values.mean(0), values.std(0), directions)
    with torch.no_grad():
        mapping.direction_gate.fill_(1.0)
    loop = ClosedLoop(
        load_regressor(out / "critic.pth"),
        mapping.direction_weights,
        mapping.direction_fixed_targets,
        2,
        mapping.direction_layer_mask,
    )
    path = out / "finetuned.pth"
    save_conditional_generator(path, base, mapping, nn.Linear(1, 1), loop, {}, {"base_sha256": "x"})
    return path


def request(**changes):
    return {
        "seed": 3,
        "values": {n: 0.0 if n == "face_pose" else 0.5 for n in PROPERTY_NAMES},
        "loop": "open",
        **changes,
    }


def test_requests_are_checked_in_the_persons_words(checkpoint, tmp_path):
    studio = Studio(checkpoint, tmp_path)
    seed, c, loop = studio.parse(request(loop="closed"))
    assert (seed, loop, c.shape) == (3, "closed", (1, len(PROPERTY_NAMES)))
    bad = {
        "seed": request(seed=-1),
        "whole number": request(seed=True),
        "eyes must be from 0 to 1, got 1.5": request(values={**request()["values"], "eyes": 1.5}),
        "face_pose: give a number": request(values={**request()["values"], "face_pose": None}),
        "mouth: give a number": request(values={k: v for k, v in request()["values"].items() if k != "mouth"}),
        "loop must be": request(loop="sideways"),
    }
    for words, body in bad.items():
        with pytest.raises(ValueError, match=words):
            studio.parse(body)
    with pytest.raises(ValueError, match="sweep: pick one of"):
        studio.save_sweep(request(sweep="nose"))


def test_open_and_closed_loop_draw_and_a_stale_request_is_dropped(checkpoint, tmp_path):
    studio = Studio(checkpoint, tmp_path)
    seed, c, _ = studio.parse(request())
    open_image, read = studio.draw(seed, c, "open", request=("tab-1", 5))
    closed_image, _ = studio.draw(seed, c, "closed", request=("tab-1", 6))
    assert open_image.shape == (1, 64, 64, 3) and read.shape == (1, len(PROPERTY_NAMES) + 1)
    assert not np.array_equal(open_image, closed_image)  # the loop moves the codes
    with pytest.raises(Stale):
        studio.draw(seed, c, "open", request=("tab-1", 4))  # overtaken by request 6 of the same page
    assert np.array_equal(studio.draw(seed, c, "open", request=("tab-1", 7))[0], open_image)  # deterministic per seed
    # A reloaded page or a second tab counts from 1 again, and is not held back by the first page's numbers.
    studio.draw(seed, c, "open", request=("tab-1", 2**53))
    assert np.array_equal(studio.draw(seed, c, "open", request=("tab-2", 1))[0], open_image)


def test_a_missing_or_foreign_checkpoint_is_a_message(base, tmp_path):
    missing = Studio(tmp_path / "finetuned.pth", tmp_path)
    assert "not found" in missing.info()["error"] and "snakemake results/finetuned.pth" in missing.info()["error"]
    base.save(tmp_path / "generator.pth")
    foreign = Studio(tmp_path / "generator.pth", tmp_path)
    assert "not a fine-tuned conditional generator" in foreign.info()["error"]
    with pytest.raises(ValueError, match="not a fine-tuned"):
        foreign.parse(request())


@pytest.fixture()
def studio_page(checkpoint, tmp_path):
    server = serve_studio(checkpoint, tmp_path / "saved", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, tmp_path / "saved"
    server.shutdown()
    server.server_close()


def test_sliders_redraw_the_face_and_the_read_back_follows(studio_page, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server, saved = studio_page
    browser.get(server.url)
    face = browser.find_element(By.ID, "face")
    wait_for(lambda: face.get_attribute("data-request"))

    def move(name, key):
        """Press a key on a slider as a person would; returns the new image and what the critic read."""
        before = face.get_attribute("data-request")
        browser.find_element(By.ID, f"slider_{name}").send_keys(key)
        wait_for(lambda: face.get_attribute("data-request") != before)
        time.sleep(0.3)  # let a trailing draw land
        read = browser.find_element(By.ID, f"read_{name}").get_attribute("data-value")
        return face.get_attribute("src"), float(read)

    dark_src, dark = move("background_light", Keys.HOME)
    light_src, light = move("background_light", Keys.END)
    assert dark_src != light_src
    assert light > dark + 0.3, (dark, light)
    assert browser.find_element(By.ID, "num_background_light").get_attribute("value") == "1"
    latencies = browser.execute_script("return window.vhLatencies")
    assert len(latencies) >= 3 and all(x["ms"] > 0 for x in latencies)

    browser.find_element(By.CSS_SELECTOR, "input[name=sweep][value=face_pose]").click()
    browser.find_element(By.ID, "save_png").click()
    browser.find_element(By.ID, "save_gif").click()
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#saved a")) == 2)
    png, gif = sorted(saved.glob("*.png")), sorted(saved.glob("*.gif"))
    assert len(png) == 1 and len(gif) == 1 and "face_pose" in gif[0].name
    assert Image.open(png[0]).size == (64, 64)
    with Image.open(gif[0]) as anim:
        assert anim.n_frames == 16 and anim.size == (256, 256)

    number = browser.find_element(By.ID, "num_eyes")
    number.clear()
    number.send_keys("1.5")
    message = wait_for(lambda: browser.find_element(By.ID, "message").text)
    assert "eyes must be from 0 to 1, got 1.5" in message and "Traceback" not in browser.page_source


def test_the_page_says_when_the_checkpoint_is_missing(tmp_path, browser):
    from selenium.webdriver.common.by import By

    server = serve_studio(tmp_path / "nowhere.pth", tmp_path, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(server.url)
        message = wait_for(lambda: browser.find_element(By.ID, "message").text)
        assert "nowhere.pth not found" in message and "snakemake results/finetuned.pth" in message
        assert not browser.find_element(By.ID, "controls").is_displayed()
    finally:
        server.shutdown()
        server.server_close()


def test_a_reload_mid_drag_and_a_second_tab_both_follow_their_sliders(studio_page, browser):
    """Each page load counts its draws on its own: a reloaded page and a second tab draw at once, and the first
    tab still draws after the second (the server kept one count for all pages once, and froze reloaded pages)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server, _ = studio_page

    def follows(key):
        face = browser.find_element(By.ID, "face")
        wait_for(lambda: face.get_attribute("data-request"))
        before = face.get_attribute("src")
        slider = browser.find_element(By.ID, "slider_background_light")
        for _ in range(6):  # a drag: several steps in a row
            slider.send_keys(key)
        return wait_for(lambda: face.get_attribute("src") != before, timeout=30)

    browser.get(server.url)
    assert follows(Keys.ARROW_RIGHT)
    browser.find_element(By.ID, "slider_background_light").send_keys(Keys.ARROW_RIGHT)
    browser.refresh()  # mid-drag: the old page's draws are still arriving
    assert follows(Keys.END)
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(server.url)
    assert follows(Keys.END)
    browser.switch_to.window(first)
    assert follows(Keys.HOME)


def post(server, path, body: bytes):
    port = server.server_address[1]
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    for key, value in {
        "Origin": f"http://127.0.0.1:{port}",
        "Content-Type": "application/json",
        "X-Token": server.token,
    }.items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_studio_answers_bad_draw_bodies_with_a_400(studio_page):
    server, _ = studio_page
    deep = b'{"a":' * 1200 + b"1" + b"}" * 1200
    status, reply = post(server, "/api/draw", deep)
    assert status == 400 and "Recursion" not in reply["error"]
    good = {**request(), "page": "tab-1"}
    for bad in (
        {**good, "request": 10**30},
        {**good, "request": -1},
        {**good, "page": "a b"},
        {**request(), "request": 3},
    ):
        status, reply = post(server, "/api/draw", json.dumps(bad).encode())
        assert status == 400 and ("request must be" in reply["error"] or "page must be" in reply["error"])


def test_saved_files_are_named_within_out_and_links_out_of_it_are_not_served(studio_page, tmp_path):
    server, saved = studio_page
    status, reply = post(server, "/api/save_png", json.dumps(request()).encode())
    assert status == 200 and "/" not in reply["saved"] and str(tmp_path) not in json.dumps(reply)
    port = server.server_address[1]
    (tmp_path / "secret.png").write_bytes((saved / reply["saved"]).read_bytes())
    (saved / "seed1_open_face_x.png").symlink_to(tmp_path / "secret.png")
    for name, code in ((reply["saved"], 200), ("seed1_open_face_x.png", 404)):
        url = f"http://127.0.0.1:{port}/files/{name}?token={server.token}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                assert resp.status == code
        except urllib.error.HTTPError as err:
            assert err.code == code


def test_a_crafted_checkpoint_is_one_line_at_start_and_while_running(tmp_path, capsys):
    crafted = tmp_path / "finetuned.pth"
    torch.save({"kind": "vhuman-conditional-generator", "base": 5, "property_names": [], "mapping": {}}, crafted)
    with pytest.raises(CheckpointError, match="finetuned.pth: the file has no base generator record"):
        load_conditional_generator(crafted)
    server = serve_studio(tmp_path / "later.pth", tmp_path / "saved", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        shutil.copy(crafted, tmp_path / "later.pth")  # swapped in while the studio runs
        url = f"http://127.0.0.1:{server.server_address[1]}/api/info?token={server.token}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            info = json.loads(resp.read())
        assert "later.pth: the file has no base generator record" in info["error"]
        torch.save(
            {"kind": "vhuman-conditional-generator", "base": {"kind": "genforce", "settings": {"x": 1}}, "mapping": {}},
            tmp_path / "later.pth",
        )
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert "contents do not fit together (TypeError)" in json.loads(resp.read())["error"]
    finally:
        server.shutdown()
        server.server_close()
