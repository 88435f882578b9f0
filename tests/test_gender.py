import itertools
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import default_config
from vhuman import gender
from vhuman.io import save_png, to_uint8
from vhuman.runtime import fused_for_inference
from vhuman.synthetic import PARAM_INDEX, render_faces, sample_face_params


def test_auroc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)
    labels = rng.random(60) < 0.4
    pairs = [
        (1.0 if s > t else 0.5 if s == t else 0.0)
        for (s, a), (t, b) in itertools.product(zip(scores, labels, strict=True), repeat=2)
        if a and not b
    ]
    assert gender.auroc(scores, labels) == pytest.approx(np.mean(pairs))
    assert np.isnan(gender.auroc(scores, np.ones(60, bool)))


def test_folds_are_stratified():
    strata = np.array([0] * 50 + [1] * 10)
    fold = gender.stratified_folds(strata, 5, seed=1)
    for k in range(5):
        assert (strata[fold == k] == 1).sum() == 2 and (fold == k).sum() == 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """120 faces whose 'gender' label is an easy visual rule (a bright background), so a short run must learn it."""
    out = tmp_path_factory.mktemp("gender")
    p = sample_face_params(120, seed=9)
    p[:, PARAM_INDEX["quality"]] = 1.0
    p[:, PARAM_INDEX["background_std"]] = 0.0
    p[:, PARAM_INDEX["background_light"]] = torch.where(torch.arange(120) % 2 == 0, 0.85, 0.15)
    with torch.inference_mode():
        images = to_uint8(render_faces(p, 64).images)
    ids = [f"{i:06d}" for i in range(120)]
    for i, img in zip(ids, images, strict=True):
        save_png(img, out / "images" / f"{i}.png")
    female = np.arange(120) % 2 == 0
    manual = pd.DataFrame(
        {
            "image_id": ids[:80],
            "gender": np.where(female[:80], "female", "male"),
            "quality": "good",
            "labeled_at": "2024",
        }
    )
    settings = gender.ClassifierSettings(
        **default_config()["gender_cnn"] | dict(folds=2, max_epochs=6, patience=6, batch_size=16, width=8)
    )
    metrics = gender.train_and_label(
        out / "images",
        ids,
        manual,
        settings,
        out / "cnn.pth",
        out / "labels.parquet",
        out / "metrics.json",
        progress=False,
    )
    return out, ids, female, metrics


def test_ensemble_labels_every_image(dataset):
    out, ids, female, metrics = dataset
    table = pq.read_table(out / "labels.parquet").to_pandas()
    assert list(table["image_id"]) == ids
    assert (table["source"][:80] == "manual").all() and (table["source"][80:] == "model").all()
    assert np.array_equal(table["hand_female"][:80].to_numpy(), female[:80].astype(float))
    assert ((table["p_female"][:80] > 0.5) == female[:80]).all()  # the model agrees with these easy labels
    rest = table[80:]
    assert rest["p_female"].between(0, 1).all() and (rest["p_female_spread"] >= 0).all()
    assert gender.auroc(rest["p_female"].to_numpy(), female[80:]) > 0.9
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["out_of_fold"]["gender"]["n"] == 80 and saved["model_labels"] == 40
    assert {"accuracy", "f1", "auroc", "confusion"} <= set(saved["out_of_fold"]["gender"])
    assert len(gender.load_ensemble(out / "cnn.pth")) == 2


def test_in_memory_prediction_matches_files(dataset):
    out, ids, female, _ = dataset
    models = gender.load_ensemble(out / "cnn.pth")
    p = sample_face_params(4, seed=9)
    with torch.inference_mode():
        probs = gender.predict_images(models, render_faces(p, 64).images, 64)
    assert probs.shape == (4, 2) and ((probs >= 0) & (probs <= 1)).all()


def test_hand_label_posterior():
    label = np.array([1.0, 1.0, 0.0])
    p = gender.hand_label_posterior(label, np.array([0.5, 0.02, 0.5]), 0.05)
    assert p[0] == pytest.approx(0.95) and p[2] == pytest.approx(0.05)
    assert p[1] < 0.5  # a 'female' label the model is sure is wrong is probably a mistake


def test_female_subset_thresholds(tmp_path):
    labels = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "p_female": [0.9, 0.95, 0.6, 1.0],
            "p_good_quality": [0.95, 0.5, 0.99, np.nan],
            "source": "model",
        }
    )
    subset = gender.female_subset(labels, 0.7, 0.9, tmp_path / "s.parquet")
    assert list(subset["image_id"]) == ["a", "d"]
    assert list(pq.read_table(tmp_path / "s.parquet").column("image_id").to_pylist()) == ["a", "d"]


def test_too_few_hand_labels_is_a_clear_error(tmp_path):
    manual = pd.DataFrame({"image_id": ["000000"], "gender": ["female"], "quality": ["good"], "labeled_at": ["x"]})
    with pytest.raises(ValueError, match="only 1 hand labels"):
        gender.train_and_label(
            tmp_path,
            ["000000"],
            manual,
            gender.ClassifierSettings(**default_config()["gender_cnn"]),
            tmp_path / "m.pth",
            tmp_path / "l.parquet",
            tmp_path / "x.json",
            progress=False,
        )


def test_batch_norm_folded_into_the_convolutions_predicts_the_same():
    torch.manual_seed(0)
    model = gender.GenderQualityNet(8)
    with torch.no_grad():  # batch statistics that are not the identity
        model.train()(torch.randn(16, 3, 32, 32) * 3 + 1)
    model.eval()
    images = (torch.rand(6, 3, 32, 32) * 255).to(torch.uint8)
    with torch.inference_mode():
        x = images.float() / 127.5 - 1
        expected = torch.sigmoid((model(x) + model(torch.flip(x, dims=[3]))) / 2).numpy()
    fused = fused_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    np.testing.assert_allclose(gender.predict(fused, images), expected, rtol=1e-5, atol=1e-6)
    assert not model.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # left as it was


def test_the_ensemble_file_says_whether_predictions_average_the_mirror(dataset, tmp_path):
    out, _, _, _ = dataset
    saved = torch.load(out / "cnn.pth", weights_only=False)
    images = (torch.rand(5, 3, 64, 64) * 255).to(torch.uint8)
    x = images.float() / 127.5 - 1
    for mirror in (True, False):
        path = tmp_path / f"mirror_{mirror}.pth"
        torch.save({**saved, "settings": saved["settings"] | {"mirror_at_inference": mirror}}, path)
        model = gender.load_ensemble(path)[0]
        assert model.mirror_at_inference is mirror
        with torch.inference_mode():
            logits = model(x)
            if mirror:
                logits = (logits + model(torch.flip(x, dims=[3]))) / 2
        np.testing.assert_allclose(gender.predict(model, images), torch.sigmoid(logits).numpy(), rtol=1e-5, atol=1e-6)
    older = tmp_path / "older.pth"  # written before the setting existed: it mirrored
    torch.save({**saved, "settings": {k: v for k, v in saved["settings"].items() if k != "mirror_at_inference"}}, older)
    assert gender.load_ensemble(older)[0].mirror_at_inference is True
