"""How well the amortised loop's latent property model predicts a new face's reading, against how many faces it
learnt from: the limit of the fine-tuned generator's open loop.

Run after `make run` (it reads that run's results/ and config/config.yaml and writes nothing):

    .venv/bin/python benchmarks/bench_latent_model.py --results results --faces 8192 32768 65536

For each number of faces it records the image closed loop's trajectories of the fine-tuned mapping (as
`vhuman.amortise` does, without the landing rounds), fits a latent property model on them, and prints its error
(rms over the eight rows, in reading units) on its own training points and on faces it has never seen, and the
open-loop control it gives (five Newton steps, evaluated against the world's truth like `evaluate_control`).
`--target truth` fits the world's exact render parameters instead of the critic's reading: a smooth target with
no critic error, to tell the model's reach from the critic's noise.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from vhuman.amortise import AmortiseSettings, Reader, fit, rms_by_row, row_ranges, trajectory_readings
from vhuman.conditional import LatentPropertyModel, load_conditional_generator
from vhuman.evaluation import PROPERTY_COLUMNS, evaluate, truth_of
from vhuman.finetune import ConditionSampler
from vhuman.properties import property_matrix
from vhuman.runtime import precision_scope
from vhuman.synthetic import PARAM_INDEX

CPU = torch.device("cpu")


class TruthReader(Reader):
    """The world's exact values in the reader's rows: the properties, then 1 for a female face."""

    def __init__(self, controller, critic):
        super().__init__(controller.cond_mapping, controller.draw, critic)
        self.controller = controller

    def read(self, wp):
        params = torch.from_numpy(truth_of(self.controller, wp))
        return torch.cat([params[:, PROPERTY_COLUMNS], params[:, [PARAM_INDEX["gender"]]]], 1).float()


def trajectories(reader, requests, settings, seed):
    codes, reads, _ = trajectory_readings(reader, requests, settings, torch.Generator().manual_seed(seed), CPU, False)
    return codes, reads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    ap.add_argument("--faces", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--loop-steps", type=int, default=None, help="default: the config's amortise.loop_steps")
    ap.add_argument("--fit-steps", type=int, default=None, help="default: the config's amortise.steps")
    ap.add_argument("--test-faces", type=int, default=2048)
    ap.add_argument("--target", choices=["critic", "truth"], default="critic")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    cfg = yaml.safe_load(args.config.read_text())
    with precision_scope(CPU, args.precision):
        model = load_conditional_generator(args.results / "finetuned.pth")
        critic, model.closed_loop = model.closed_loop.critic, None  # the critic reads; drawing is open loop
        mapping = model.cond_mapping
        drawing_steps = int(mapping.latent_steps)
        mapping.latent_model = None  # the fine-tuned mapping before amortising
        mapping.latent_steps.fill_(0)
        table = pd.read_parquet(args.results / "properties.parquet")
        rows = property_matrix(table)
        requests = ConditionSampler(table, cfg["finetune"]["train"]["replace_probability"], torch.Generator())
        am = dict(cfg["finetune"]["amortise"])
        am["loop_steps"] = args.loop_steps or am["loop_steps"]
        steps = args.fit_steps or am["steps"]
        reader = TruthReader(model, critic) if args.target == "truth" else Reader(mapping, model.draw, critic)
        test = trajectories(reader, requests, AmortiseSettings(**{**am, "samples": args.test_faces}), seed=12345)
        ev = cfg["evaluation"]
        report = []
        for n in args.faces:
            requests.gen.manual_seed(n)
            start = time.perf_counter()
            codes, reads = trajectories(reader, requests, AmortiseSettings(**{**am, "samples": n}), seed=n)
            recorded = time.perf_counter() - start
            low, high = row_ranges()
            torch.manual_seed(0)
            latent = LatentPropertyModel(mapping.num_layers, codes.shape[-1], am["hidden"], low, high)
            flat = codes.flatten(0, 1)
            latent.w_mean.copy_(flat.mean(0))
            latent.w_std.copy_(flat.std(0) + 1e-6)
            start = time.perf_counter()
            fit(latent, codes, reads, steps, am["lr"], am["batch_size"], torch.Generator().manual_seed(0), CPU)
            fitted = time.perf_counter() - start
            sample = torch.randperm(len(codes), generator=torch.Generator().manual_seed(1))[: len(test[0])]
            own = float(np.mean(rms_by_row(latent, codes[sample], reads[sample], CPU)))
            fresh = float(np.mean(rms_by_row(latent, *test, CPU)))
            mapping.attach_latent_model(latent, drawing_steps)
            truth = evaluate(model, rows, ev["num_z"], ev["levels"], ev["seed"], with_truth=True, progress=False)
            mapping.latent_model = None
            mapping.latent_steps.fill_(0)
            r = [m["pearson_r"] for m in truth["truth"].values()]
            mae = [m["mae"] for m in truth["truth"].values()]
            row = {
                "faces": n,
                "points": len(codes),
                "rms_on_training_points": round(own, 4),
                "rms_on_unseen_faces": round(fresh, 4),
                "open_loop_r_min": round(min(r), 3),
                "open_loop_r_max": round(max(r), 3),
                "open_loop_mae_mean": round(float(np.mean(mae)), 3),
                "seconds_recording": round(recorded, 1),
                "seconds_fitting": round(fitted, 1),
            }
            report.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nlatent model fitted to the {args.target}'s reading")
    print("| faces | points | rms, training points | rms, unseen faces | open-loop r | mean MAE |")
    print("|---|---|---|---|---|---|")
    for row in report:
        print(
            f"| {row['faces']:,} | {row['points']:,} | {row['rms_on_training_points']:.3f} | "
            f"{row['rms_on_unseen_faces']:.3f} | {row['open_loop_r_min']:.3f}–{row['open_loop_r_max']:.3f} | "
            f"{row['open_loop_mae_mean']:.3f} |"
        )


if __name__ == "__main__":
    main()
