"""The docs say what runs: every command block marked runnable runs as written (the cheap ones: `--help` and
Snakemake's dry runs), the results tables are the committed run's, and the README stays a guide."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_workflow import workdir_copy
from vhuman import results_doc, results_real

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "config" / "README.md"]
RUNNABLE = re.compile(r"<!-- runnable -->\n```bash\n(.*?)```", re.S)
BIN = Path(sys.executable).parent


def runnable_commands() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for block in RUNNABLE.findall(path.read_text()):
            found += [(path.name, line) for line in block.splitlines() if line.strip()]
    return found


def test_the_readme_and_the_guides_mark_their_cheap_commands():
    commands = runnable_commands()
    assert len(commands) >= 6, commands
    for name, line in commands:
        assert "--help" in line or " -n " in line, f"{name}: a runnable block holds an expensive command: {line}"


@pytest.fixture(scope="module")
def user_workdir(tmp_path_factory):
    """A checkout as a user of the real configuration has it: the workflow, its profiles, the hand labels."""
    work = workdir_copy(tmp_path_factory.mktemp("docs"))
    shutil.copytree(REPO / "profiles", work / "profiles")
    labels = work / "data" / "labels" / "manual_labels.csv"
    labels.parent.mkdir(parents=True)
    rows = [f"{i:06d},female,good,2026-01-01T00:00:00+00:00" for i in range(2000)]
    labels.write_text("\n".join(["image_id,gender,quality,labeled_at", *rows]) + "\n")
    return work


@pytest.mark.parametrize("command", [c for _, c in runnable_commands()])
def test_every_runnable_command_runs_as_written(command, user_workdir):
    line = command.replace(".venv/bin/", f"{BIN}/")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", line], cwd=user_workdir, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip() or proc.stderr.strip()


def test_the_committed_results_are_the_committed_run_s():
    """docs/results.md and the README's headline table are what `make docs` writes from docs/run/."""
    results_doc.main(["--check"])


def test_the_committed_real_face_results_are_the_committed_real_run_s():
    """docs/results_real.md and the README's real-face table are what `make docs-real` writes from docs/run_real/."""
    results_real.main(["--check"])


def test_a_changed_figure_in_the_real_run_changes_its_tables(tmp_path):
    run = tmp_path / "run_real"
    shutil.copytree(REPO / "docs" / "run_real", run)
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    page = tmp_path / "results_real.md"
    args = ["--run", str(run), "--readme", str(tmp_path / "README.md"), "--results-md", str(page)]
    results_real.main(args)
    control = json.loads((run / "control.json").read_text())
    control["directions"]["judges"]["faces_found"] = 0.5
    (run / "control.json").write_text(json.dumps(control))
    with pytest.raises(SystemExit, match="make docs-real"):
        results_real.main([*args, "--check"])
    results_real.main(args)
    assert "50 %: **no**" in page.read_text() and "| 50 % |" in (tmp_path / "README.md").read_text()


def test_a_changed_figure_in_the_run_changes_the_tables(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(REPO / "docs" / "run", run)
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copy(REPO / "docs" / "results.md", tmp_path / "results.md")
    args = ["--run", str(run), "--readme", str(tmp_path / "README.md"), "--results-md", str(tmp_path / "results.md")]
    results_doc.main([*args, "--check"])
    control = json.loads((run / "control.json").read_text())
    control["finetuned"]["truth"]["mouth"]["pearson_r"] = 0.123456
    (run / "control.json").write_text(json.dumps(control))
    with pytest.raises(SystemExit, match="make docs"):
        results_doc.main([*args, "--check"])
    results_doc.main(args)
    assert "| mouth | 0.123 |" in (tmp_path / "results.md").read_text()
    results_doc.main([*args, "--check"])


def test_the_readme_is_a_guide_not_a_notebook():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 210
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    for needed in ("Requirements", "Quick start", "Real weights", "SLURM", "Outputs and resuming", "Results"):
        assert f"## {needed}" in headings, needed
    for path in DOCS:  # history lives in git, not in the docs
        for phrase in ("old scales", "earlier budgets", "earlier run", "before this change", "an hour later"):
            assert phrase not in path.read_text().lower(), f"{path.name}: {phrase!r}"
