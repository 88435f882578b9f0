import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def test_ruff_is_clean():
    proc = subprocess.run(
        [str(BIN / "ruff"), "check", "src", "tests", "workflow", "benchmarks"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


def test_snakemake_lint_has_no_complaints_beyond_environments():
    proc = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    # The package is installed into one virtual environment (make run), so per-rule conda envs are not used.
    complaints = [line for line in text.splitlines() if line.strip().startswith("* ")]
    other = [c for c in complaints if "conda environment or container" not in c]
    assert not other, text
