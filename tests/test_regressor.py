"""The property regressor (the fine-tune's critic): it learns to read the properties off images of the world."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import default_config
from vhuman.regressor import RegressorSettings, load_regressor, train_regressor
from vhuman.vocabulary import PROPERTY_NAMES


def test_regressor_learns_to_read_properties_and_reloads(world_on_disk, tmp_path):
    folder, table, labels = world_on_disk
    settings = RegressorSettings(**{**default_config()["finetune"]["regressor"], "steps": 300, "width": 8})
    metrics = train_regressor(folder, table, labels, settings, tmp_path / "r.pth", tmp_path / "m.json", False)
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    assert metrics["held_out_images"] == 60
    # Held-out images: the easy, large-area properties are read well after 300 steps.
    assert metrics["background_light"]["pearson_r"] > 0.8 and metrics["hair_color"]["pearson_r"] > 0.8
    model = load_regressor(tmp_path / "r.pth")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    read, logit = model(x)
    assert read.shape == (2, len(PROPERTY_NAMES)) and logit.shape == (2,)
    assert not any(p.requires_grad for p in model.parameters())  # a frozen critic


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 11, 25])
def test_any_step_count_the_schema_accepts_trains(world_on_disk, tmp_path, steps):
    folder, table, labels = world_on_disk
    settings = RegressorSettings(**{**default_config()["finetune"]["regressor"], "steps": steps, "width": 4})
    metrics = train_regressor(folder, table.head(40), labels.head(40), settings, tmp_path / "r.pth", None, False)
    assert np.isfinite(metrics["eyes"]["mae"])


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_critic_reads_larger_images_in_mixed_precision(precision):
    """The real config's critic reads 128-pixel copies of 256-pixel faces; resizing must work under autocast
    (antialiased resizing has no bfloat16 kernel on the CPU) and agree with float32."""
    from vhuman.regressor import PropertyRegressor
    from vhuman.runtime import precision_scope

    torch.manual_seed(0)
    critic = PropertyRegressor(width=8, input_size=128).eval()
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        full, _ = critic(images)
        with precision_scope(torch.device("cpu"), precision):
            mixed, _ = critic(images.to(getattr(torch, precision)))
    assert mixed.shape == (2, len(PROPERTY_NAMES))
    assert torch.allclose(mixed.float(), full, atol=0.05)
