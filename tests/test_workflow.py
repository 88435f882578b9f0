"""The workflow as a user runs it: Snakemake on the embedded default, shrunk to tiny settings."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# Every stage, shrunk so the whole DAG runs in a few minutes on 2 cores.
TINY = {
    "generate": {"num_images": 72, "batch_size": 24, "seed": 0},
    "labels": {
        "manual_csv": "results/labels/manual_labels.csv",
        "num_manual": 48,
        "simulated_error_rate": 0.05,
        "seed": 0,
        "hand_label_error_rate": 0.05,
    },
    "gender_cnn": {"folds": 2, "max_epochs": 2, "patience": 2, "batch_size": 16, "width": 8},
    "subset": {"min_p_female": 0.3, "min_p_good_quality": 0.1},
    "segmentation": {
        "checkpoint": "results/models/world_parser.pth",
        "mask_resolution": 128,
        "batch_size": 16,
        "world_parser": {
            "image_resolution": 64,
            "train_mask_resolution": 64,
            "train_images": 200,
            "steps": 300,
            "batch_size": 8,
            "lr": 0.003,
            "width": 8,
            "seed": 0,
        },
    },
    "finetune": {
        "regressor": {"input_size": 64, "steps": 20, "batch_size": 16, "lr": 0.002, "width": 8, "seed": 0},
        "train": {"steps": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 3},
    },
    "evaluation": {"num_z": 3, "levels": 3, "seed": 0, "picture_seeds": [0, 1]},
    "report": {"grid_rows": 2, "grid_cols": 4},
}


def workdir_copy(tmp_path: Path) -> Path:
    work = tmp_path / "wf"
    work.mkdir()
    shutil.copy(REPO / "Snakefile", work)
    shutil.copytree(REPO / "workflow", work / "workflow")
    shutil.copytree(REPO / "config", work / "config")
    return work


def snakemake(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [SNAKEMAKE, "--cores", "2", "--resources", "gpu=1", *args], cwd=work, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = workdir_copy(tmp_path_factory.mktemp("e2e"))
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    snakemake(work, "--configfile", "tiny.yaml")
    return work


def test_demo_dag_runs_end_to_end(tiny_run):
    results = tiny_run / "results"
    assert pq.read_table(results / "generated/latents.parquet").num_rows == 72
    assert len(list((results / "generated/images").glob("*.png"))) == 72
    assert pq.read_table(results / "generated/truth.parquet").num_rows == 72
    labels = pq.read_table(results / "gender/labels.parquet").to_pandas()
    assert len(labels) == 72 and (labels["source"] == "manual").sum() == 48
    subset = pq.read_table(results / "subset/female.parquet").to_pandas()
    masks = sorted(p.stem for p in (results / "segmentation/masks").glob("*.png"))
    assert masks == sorted(subset["image_id"]) and len(masks) > 0
    props = pq.read_table(results / "properties.parquet").to_pandas()
    assert sorted(props["image_id"]) == masks and {"eyes", "eyes_valid", "eyes_z", "gender"} <= set(props.columns)
    control = json.loads((results / "evaluation/control.json").read_text())
    assert {"finetuned", "directions"} <= set(control)
    assert {"truth", "parser", "female_rate"} <= set(control["finetuned"])
    assert len(list((results / "evaluation/sweeps").glob("*.png"))) == 14
    assert {p.name for p in (results / "evaluation/animations").glob("*.gif")} == {"blink.gif", "talk.gif", "turn.gif"}
    assert (results / "finetuned.pth").stat().st_size > 0
    assert (tiny_run / "logs/generate.log").exists()


def test_nothing_left_to_do_after_a_run(tiny_run):
    dry = snakemake(tiny_run, "--configfile", "tiny.yaml", "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_gpu_stages_rerun_only_when_their_inputs_change(tiny_run):
    unrelated = {"report": {"grid_rows": 1, "grid_cols": 4}}
    (tiny_run / "unrelated.yaml").write_text(yaml.safe_dump(unrelated))
    dry = snakemake(tiny_run, "--configfile", "tiny.yaml", "unrelated.yaml", "-n", "results/finetuned.pth")
    assert "rule finetune:" not in dry.stdout and "Nothing to be done" in dry.stdout + dry.stderr
    changed = {"finetune": {"train": {"lr_mapping": 0.0005}}}
    (tiny_run / "changed.yaml").write_text(yaml.safe_dump(changed))
    dry = snakemake(tiny_run, "--configfile", "tiny.yaml", "changed.yaml", "-n", "results/finetuned.pth")
    assert "rule finetune:" in dry.stdout and "rule generate:" not in dry.stdout


def test_bad_config_value_names_the_key(tmp_path):
    work = workdir_copy(tmp_path)
    (work / "bad.yaml").write_text(yaml.safe_dump({"generate": {"num_images": -5, "batch_size": 8, "seed": 0}}))
    proc = snakemake(work, "--configfile", "bad.yaml", "-n", check=False)
    assert proc.returncode != 0
    assert "num_images" in proc.stderr + proc.stdout


def test_real_weights_config_plans_the_download_and_asks_for_hand_labels(tmp_path):
    work = workdir_copy(tmp_path)
    real = "config/stylegan_celeba_partial256.yaml"
    proc = snakemake(work, "--configfile", real, "-n", "results/generated/latents.parquet")
    assert "download_generator" in proc.stdout and "synthetic_generator" not in proc.stdout
    proc = snakemake(work, "--configfile", real, "-n", check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "Hand labels data/labels/manual_labels.csv are missing" in text and "vhuman-label" in text


def test_report_is_built(tiny_run):
    snakemake(tiny_run, "--configfile", "tiny.yaml", "--report", "results/report.zip")
    assert (tiny_run / "results/report.zip").stat().st_size > 10_000
