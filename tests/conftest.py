import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import yaml

from vhuman.directions import fit_directions
from vhuman.generators import SyntheticGenerator
from vhuman.io import save_png, to_uint8, vectors_column
from vhuman.labeling import serve
from vhuman.latents import truncate
from vhuman.synthetic import PARAM_INDEX, render_faces, sample_face_params
from vhuman.vocabulary import PROPERTY_NAMES

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


def default_config() -> dict:
    """The embedded default config: the one source of every setting's default."""
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


FIXTURES = REPO / "tests" / "fixtures"


def reference_file(*parts: str) -> Path:
    """A fixture of the shared reference set beside the repository. A user's clone does not have it (the committed
    fixtures in tests/fixtures/ prove the same networks there); CI does, so there a missing file fails."""
    path = REFERENCE.joinpath(*parts)
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"reference fixture {path} is missing; CI runs with ../shared/reference beside the clone")
        pytest.skip(f"reference fixture {path} is not present beside the repository")
    return path


@pytest.fixture(scope="session")
def reference_outputs() -> dict:
    """The committed reference outputs (tests/fixtures/README.md says how they were made)."""
    path = FIXTURES / "reference_outputs.pt"
    if not path.is_file():
        pytest.fail(f"{path} is missing from the checkout: the exactness tests cannot run without it")
    return torch.load(path, map_location="cpu", weights_only=True)


def wait_for(predicate, timeout=20.0):
    """Poll a page until ``predicate()`` is truthy; returns its value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


@pytest.fixture()
def browser(tmp_path):
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        if os.environ.get("VHUMAN_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ):
        options.add_argument(flag)
    drv = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_bin), options=options)
    yield drv
    drv.quit()


# ---- a small synthetic world for the latent-path tests -------------------------------------------------------


@pytest.fixture(scope="module")
def base():
    return SyntheticGenerator(64, seed=0)


@pytest.fixture(scope="module")
def world(base):
    """The truth of 400 generated faces stands in for a measured property table."""
    z = torch.randn(400, 512, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        w = base.mapping(z)
        params = base.render_params(truncate(w, base.w_avg, base.num_layers))
        images = base.synthesis(truncate(w, base.w_avg, base.num_layers))
    table = pd.DataFrame({"image_id": [f"{i:06d}" for i in range(400)]})
    for name in PROPERTY_NAMES:
        table[name] = params[:, PARAM_INDEX[name]].numpy()
        table[f"{name}_valid"] = True
    uint8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return table, w, uint8


@pytest.fixture(scope="module")
def directions(world):
    table, w, _ = world
    latents = pa.table({"image_id": list(table["image_id"]), "w": vectors_column(w.numpy())})
    labels = pd.DataFrame({"image_id": table["image_id"], "p_female": (np.arange(len(table)) % 3 > 0).astype(float)})
    return fit_directions(latents, table, labels)


@pytest.fixture(scope="module")
def world_on_disk(tmp_path_factory):
    """600 rendered faces as PNGs, their true properties as the property table, their gender as p_female."""
    folder = tmp_path_factory.mktemp("images")
    params = sample_face_params(600, seed=5)
    for i, rgb in enumerate(to_uint8(render_faces(params, 64).images)):
        save_png(rgb, folder / f"{i:06d}.png")
    ids = [f"{i:06d}" for i in range(600)]
    table = pd.DataFrame({"image_id": ids})
    for name in PROPERTY_NAMES:
        table[name] = params[:, PARAM_INDEX[name]].numpy()
        table[f"{name}_valid"] = True
    labels = pd.DataFrame({"image_id": ids, "p_female": (params[:, PARAM_INDEX["gender"]] > 0.5).float().numpy()})
    return folder, table, labels


# ---- the labelling server on 60 small faces ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("label_images")
    with torch.inference_mode():
        images = to_uint8(render_faces(sample_face_params(60, seed=2), 64).images)
    for i, img in enumerate(images):
        save_png(img, out / f"{i:06d}.png")
    return out


@pytest.fixture()
def label_server(images_dir, tmp_path):
    """A running labelling server for the first 50 images: its base URL, the server and its label CSV."""
    srv = serve(images_dir, tmp_path / "labels.csv", first=50, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv, tmp_path / "labels.csv"
    srv.shutdown()
    srv.server_close()
