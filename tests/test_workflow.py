"""The workflow as a user runs it: Snakemake on the embedded default, shrunk to tiny settings."""

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = {"generate": {"num_images": 24, "batch_size": 8, "seed": 0}, "report": {"grid_rows": 2, "grid_cols": 4}}


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
    latents = pq.read_table(tiny_run / "results/generated/latents.parquet")
    assert latents.num_rows == 24
    assert len(list((tiny_run / "results/generated/images").glob("*.png"))) == 24
    assert pq.read_table(tiny_run / "results/generated/truth.parquet").num_rows == 24
    assert (tiny_run / "results/generated/grid.png").stat().st_size > 0
    assert (tiny_run / "logs/generate.log").exists()


def test_nothing_left_to_do_after_a_run(tiny_run):
    dry = snakemake(tiny_run, "--configfile", "tiny.yaml", "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_bad_config_value_names_the_key(tmp_path):
    work = workdir_copy(tmp_path)
    (work / "bad.yaml").write_text(yaml.safe_dump({"generate": {"num_images": -5, "batch_size": 8, "seed": 0}}))
    proc = snakemake(work, "--configfile", "bad.yaml", "-n", check=False)
    assert proc.returncode != 0
    assert "num_images" in proc.stderr + proc.stdout


def test_real_weights_config_plans_the_download(tmp_path):
    work = workdir_copy(tmp_path)
    proc = snakemake(work, "--configfile", "config/stylegan_celeba_partial256.yaml", "-n")
    assert "download_generator" in proc.stdout and "synthetic_generator" not in proc.stdout


def test_report_is_built(tiny_run):
    snakemake(tiny_run, "--configfile", "tiny.yaml", "--report", "results/report.zip")
    assert (tiny_run / "results/report.zip").stat().st_size > 10_000
