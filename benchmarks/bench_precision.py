"""float32 against mixed precision, side by side on the same inputs: each network stage's result and its time.

Run after `make run` (it reads that run's results/ and config/config.yaml, and writes only under a scratch folder):

    .venv/bin/python benchmarks/bench_precision.py --results results --stages parser gender regressor evaluation

Per stage it trains or runs the stage's own package function twice, in float32 and in the mixed precision
(`--precision`, default auto), and prints the stage's own quality figure for both and the time ratio:
world parser mIoU on held-out renders, gender AUROC against the world's truth, property-regressor r on held-out
images, control r (fine-tuned generator, open and closed loop, against the world's truth), the largest image
difference of a StyleGAN 256 sample (random weights) in 1/255 steps, and ten fine-tune steps (time per step, mean
control loss).

`--other-seed` adds a third run of the trained stages (parser, gender, regressor): float32 again with the stage's
seed + 1. How far float32 moves with another seed is the yardstick for how far mixed precision moves.
"""

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import bench_budgets  # the same stage runs, beside this script
import numpy as np
import pandas as pd
import torch
import yaml

from vhuman.conditional import load_conditional_generator
from vhuman.evaluation import evaluate
from vhuman.finetune import Finetune, FinetuneSettings
from vhuman.generators import load_generator
from vhuman.io import load_image_batch, load_torch_file, to_uint8
from vhuman.properties import property_matrix
from vhuman.regressor import load_regressor
from vhuman.runtime import precision_scope
from vhuman.segmentation import ParserSettings, train_world_parser
from vhuman.stylegan import StyleGANGenerator
from vhuman.vocabulary import PROPERTY_NAMES

CPU = torch.device("cpu")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def parser_stage(cfg, results, scratch, precision):
    settings = ParserSettings(**cfg["segmentation"]["world_parser"])
    with precision_scope(CPU, precision):
        metrics = train_world_parser(
            settings, scratch / "parser.pth", cfg["segmentation"]["mask_resolution"], None, False
        )
    return {"mIoU": metrics["held_out_renders"]["miou"]}


def gender_stage(cfg, results, scratch, precision):
    with precision_scope(CPU, precision):
        figures = bench_budgets.gender_stage(cfg, results, scratch)
    return {key: figures[key] for key in ("gender AUROC", "quality AUROC")}


def regressor_stage(cfg, results, scratch, precision):
    with precision_scope(CPU, precision):
        figures = bench_budgets.regressor_stage(cfg, results, scratch)
    return {f"r {name}": figures[name] for name in PROPERTY_NAMES}


def evaluation_stage(cfg, results, scratch, precision):
    rows = property_matrix(pd.read_parquet(results / "properties.parquet"))
    out = {}
    ev = cfg["evaluation"]
    for name, steps in (("open loop", 0), ("closed loop", None)):
        model = load_conditional_generator(results / "finetuned.pth", closed_loop_steps=steps)
        with precision_scope(CPU, precision):
            report = evaluate(model, rows, ev["num_z"], ev["levels"], ev["seed"], with_truth=True, progress=False)
        out[f"{name} min r"] = min(report["truth"][p]["pearson_r"] for p in PROPERTY_NAMES)
        out[f"{name} mean r"] = float(np.mean([report["truth"][p]["pearson_r"] for p in PROPERTY_NAMES]))
    return out


def finetune_steps_stage(cfg, results, scratch, precision, steps=10):
    """Ten steps of the fine-tune on the run's own data, critic and directions: seconds per step and the mean
    control loss over them."""
    base = load_generator(results / "models/synthetic_generator.pth")
    properties = pd.read_parquet(results / "properties.parquet")
    images = load_image_batch(results / "generated/images", list(properties["image_id"]), base.resolution)
    settings = FinetuneSettings(**{**cfg["finetune"]["train"], "steps": steps})
    directions = load_torch_file(results / "directions/directions.pth", what="latent directions")
    regressor = load_regressor(results / "models/property_regressor.pth")
    with precision_scope(CPU, precision):
        run = Finetune(base, None, regressor, properties, images, settings, CPU, directions, {})
        control, start = [], time.perf_counter()
        for step in range(steps):
            batch = run.draw_batch()
            losses, fakes, cn = run.generator_step(batch)
            run.discriminator_step(batch, fakes, cn, step)
            control.append(float(losses["control"].detach()))
    return {"seconds per step": (time.perf_counter() - start) / steps, "mean control loss": float(np.mean(control))}


_STYLEGAN = {}


def generate_stage(cfg, results, scratch, precision):
    """Images of a full-size StyleGAN 256 (random weights): their float32 reference is computed once."""
    if "net" not in _STYLEGAN:
        torch.manual_seed(0)
        _STYLEGAN["net"] = StyleGANGenerator(256).eval()
        _STYLEGAN["z"] = torch.randn(8, 512)
    net, z = _STYLEGAN["net"], _STYLEGAN["z"]
    with torch.inference_mode(), precision_scope(CPU, precision):
        images = net.synthesis(net.truncation(net.mapping(z), 0.7, 8))
    pixels = to_uint8(images.float()).astype(int)
    if "reference" not in _STYLEGAN:
        _STYLEGAN["reference"] = pixels
    return {"largest pixel difference to float32 (of 255)": int(np.abs(pixels - _STYLEGAN["reference"]).max())}


STAGES = {
    "parser": parser_stage,
    "gender": gender_stage,
    "regressor": regressor_stage,
    "evaluation": evaluation_stage,
    "generate": generate_stage,
    "finetune": finetune_steps_stage,
}


# Where each trained stage's seed sits in the config.
SEED_KEYS = {
    "parser": ("segmentation", "world_parser"),
    "gender": ("gender_cnn",),
    "regressor": ("finetune", "regressor"),
}
OTHER_SEED = "float32, seed + 1"


def with_next_seed(cfg: dict, stage: str) -> dict:
    out = copy.deepcopy(cfg)
    section = out
    for key in SEED_KEYS[stage]:
        section = section[key]
    section["seed"] += 1
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--config", default="config/config.yaml", type=Path)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--precision", default="auto", choices=["auto", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--other-seed", action="store_true", help="also train float32 with the stage's seed + 1")
    ap.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(args.config.read_text())
    table = {}
    for stage in args.stages:
        runs = [("float32", "float32", cfg), (args.precision, args.precision, cfg)]
        if args.other_seed and stage in SEED_KEYS:
            runs.append((OTHER_SEED, "float32", with_next_seed(cfg, stage)))
        row = {}
        for name, precision, run_cfg in runs:
            with tempfile.TemporaryDirectory() as scratch:
                run = STAGES[stage]
                figures, seconds = timed(
                    lambda run=run, p=precision, s=scratch, c=run_cfg: run(c, args.results, Path(s), p)
                )
            row[name] = {"seconds": round(seconds, 1), **figures}
        mixed = row[args.precision]
        row["speed-up"] = round(row["float32"]["seconds"] / mixed["seconds"], 2)
        table[stage] = row
        print(
            f"\n{stage}: float32 {row['float32']['seconds']} s, {args.precision} {mixed['seconds']} s, "
            f"speed-up {row['speed-up']}x"
        )
        for key in row["float32"]:
            if key != "seconds":
                line = f"  {key}: {row['float32'][key]:.4f} float32, {mixed[key]:.4f} {args.precision}"
                if OTHER_SEED in row:
                    line += f", {row[OTHER_SEED][key]:.4f} {OTHER_SEED}"
                print(line)
    if args.out:
        args.out.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
