"""The real configuration's whole DAG on tiny settings with random full-size weights, on a chosen device and
precision, timed per rule from Snakemake's benchmark files.

For a GPU machine: the test suite runs the same DAG on the CPU with the genuine BiSeNet weights
(tests/test_real_path.py); here both networks are random (GenForce layout for StyleGAN, the 79999_iter.pth
layout for BiSeNet), so that a machine without the package index runs every rule on its accelerator.

    python benchmarks/real_config_on_device.py --device cuda --precision float16 --work /tmp/real
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_real_path import REAL, write_user_files  # noqa: E402
from tests.test_workflow import workdir_copy  # noqa: E402
from vhuman.bisenet import BiSeNet  # noqa: E402
from vhuman.conditional import load_conditional_generator  # noqa: E402
from vhuman.io import save_torch_atomic, sha256_file  # noqa: E402


def prepare(work: Path, device: str, precision: str) -> list[str]:
    """The real-path test's user files, plus a random BiSeNet in the 79999_iter.pth layout."""
    bisenet = work / "data/weights/79999_iter.pth"
    bisenet.parent.mkdir(parents=True)
    save_torch_atomic(BiSeNet().state_dict(), bisenet)
    tiny = write_user_files(work)
    tiny |= {"device": device, "precision": precision}
    tiny["segmentation"] = {**tiny["segmentation"], "sha256": sha256_file(bisenet)}
    (work / "device.yaml").write_text(yaml.safe_dump(tiny))
    return ["--configfile", REAL, "device.yaml"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--cores", default="8")
    args = ap.parse_args()
    args.work.mkdir(parents=True)
    work = workdir_copy(args.work)
    config = prepare(work, args.device, args.precision)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "snakemake", "--cores", args.cores, "--resources", "gpu=1", *config]
    for extra in ([], ["--report", "results/report.html"]):
        proc = subprocess.run(cmd + extra, cwd=work, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stdout[-3000:], proc.stderr[-6000:])
            raise SystemExit(f"snakemake {' '.join(extra)} failed")
    print(f"{args.device} {args.precision}: whole DAG and report in {time.perf_counter() - start:.0f} s")
    for tsv in sorted((work / "results/benchmarks").glob("*.tsv")):
        seconds = pd.read_csv(tsv, sep="\t")["s"].iloc[0]
        print(f"  {tsv.stem:24s} {seconds:7.1f} s")
    control = json.loads((work / "results/evaluation/control.json").read_text())
    model = load_conditional_generator(work / "results/finetuned.pth").to(args.device)
    c = torch.full((2, 7), 0.5, device=args.device)
    images = model(torch.randn(2, model.z_dim, device=args.device), c)
    print(f"  control.json variants {sorted(control)}; finetuned.pth draws {tuple(images.shape)}")


if __name__ == "__main__":
    main()
