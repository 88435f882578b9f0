"""How the measured closed loop converges on real faces: the workflow's own measurement of each swept face after
0, 1, ..., S corrections, and the share of faces whose codes the reach box holds back.

Run after a real-face run (it reads that run's results/ and writes one JSON):

    .venv/bin/python benchmarks/bench_loop_steps.py --results results --steps 5 \\
        --properties eyes hair_length background_std --out results/evaluation/loop_steps.json

The sweeps are `evaluate_control`'s (same seed, same bounds: the female subset's 5th to 95th percentile), drawn by
the fine-tuned generator and by the directions baseline, each refined by the loop that reads the parser and the
properties stage (`finetuned_measured_loop`, `directions_measured_loop`), here with S steps instead of the file's.
After each correction the loop moves the codes back into the reach box (`ClosedLoop.within_reach`: the data's own
range of readings of each direction, widened); a face counts as held back when its swept property's reading sits
on the box's edge. If r stops rising while the share held back grows, the request lies beyond what the codes may
reach without leaving the data's range; if r stops rising with none held back, the limit is the measurement or the
direction, not the number of steps.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from vhuman.directions import linear_reading
from vhuman.evaluation import agreement, controllers_to_compare, measured_properties, sweep_bounds, sweep_requests
from vhuman.properties import property_matrix
from vhuman.runtime import precision_scope
from vhuman.segmentation import Parser
from vhuman.vocabulary import PROPERTY_NAMES

CPU = torch.device("cpu")


class Measurement:
    """The workflow's measurement of drawn faces, kept for the images last measured so that the loop's own reading
    and this benchmark's record of it cost one parse."""

    def __init__(self, parser):
        self.parser, self.images, self.values = parser, None, None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images is not self.images:
            values = measured_properties(self.parser, images).astype(np.float32)
            self.images, self.values = images, torch.from_numpy(values)
        return self.values


def held_back(loop, wp: torch.Tensor, origin: torch.Tensor, k: int) -> np.ndarray:
    """Whether the reach box holds row ``k``'s reading of codes ``wp`` at its edge (widened to ``origin``)."""
    if loop.reach is None:  # a loop without a box holds nothing back
        return np.zeros(len(wp), bool)
    bias, low, high = loop.reach
    tol = 1e-4 * float(high[k] - low[k])
    reading = linear_reading(wp, loop.weights, bias, loop.layer_mask)[:, k]
    low, high = torch.minimum(low[k], origin[:, k]), torch.maximum(high[k], origin[:, k])
    return ((reading - low).abs() <= tol).numpy() | ((reading - high).abs() <= tol).numpy()


def trace_batch(controller, loop, measure, z, c, k):
    """One batch's swept property measured, and whether it is held back, at each drawing of the loop: [S + 1, N]."""
    values, flags = [], []
    with torch.inference_mode():
        wp = controller.mapping(z, c)
        origin = None if loop.reach is None else linear_reading(wp, loop.weights, loop.reach[0], loop.layer_mask)

        def draw(codes):
            images = controller.draw(codes)
            values.append(measure(images)[:, k].numpy())
            flags.append(held_back(loop, codes, origin, k))
            return images

        draw(loop(wp, c, draw))  # the loop draws before each correction; the last drawing is the result
    return np.stack(values), np.stack(flags)


def trace_sweep(controller, loop, measure, z, requests, k, batch):
    """``trace_batch`` over all faces of a sweep: [S + 1, F] each."""
    traced = [
        trace_batch(controller, loop, measure, z[s : s + batch], torch.from_numpy(requests[s : s + batch]), k)
        for s in range(0, len(requests), batch)
    ]
    return np.concatenate([t[0] for t in traced], axis=1), np.concatenate([t[1] for t in traced], axis=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--config", type=Path, default=Path("config/mobilestylegan_ffhq.yaml"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--num-z", type=int, default=8)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--properties", nargs="+", default=["eyes", "hair_length", "background_std"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = yaml.safe_load(args.config.read_text())
    torch.set_num_threads(2)
    with precision_scope(CPU, args.precision):
        seg, ev = cfg["segmentation"], cfg["evaluation"]
        measure = Measurement(Parser("bisenet", seg["checkpoint"], seg["mask_resolution"], CPU))
        table = pd.read_parquet(args.results / "properties.parquet")
        rows, bounds = property_matrix(table), sweep_bounds(table, ev["sweep_percentiles"])
        variants = controllers_to_compare(
            args.results / "finetuned.pth", args.results / "directions/directions.pth", CPU, measure=measure
        )
        report = {"steps": args.steps, "num_z": args.num_z, "levels": args.levels, "sweep_bounds": bounds}
        for name in ("finetuned_measured_loop", "directions_measured_loop"):
            controller = variants[name]
            loop = controller.closed_loop.copy_with(args.steps, measure)
            z_all, requested, z_index, swept = sweep_requests(
                rows, args.num_z, args.levels, ev["seed"], bounds, controller.z_dim
            )
            report[name] = {}
            for prop in args.properties:
                k = PROPERTY_NAMES.index(prop)
                sel = swept == k
                start = time.perf_counter()
                values, flags = trace_sweep(
                    controller, loop, measure, z_all[z_index[sel]], requested[sel], k, args.batch
                )
                req = requested[sel, k]
                per_step = [
                    {**agreement(req, v), "share_held_back": float(f.mean())}
                    for v, f in zip(values, flags, strict=True)
                ]
                free = ~flags[-1]
                report[name][prop] = {
                    "per_step": per_step,
                    "faces": int(sel.sum()),
                    "last_step_not_held_back": agreement(req[free], values[-1][free]) if free.sum() > 2 else None,
                    "seconds": time.perf_counter() - start,
                }
                print(name, prop, f"{report[name][prop]['seconds']:.0f} s")
                for t, row in enumerate(per_step):
                    print(
                        f"  after {t} corrections: r {row['pearson_r']:.3f}  MAE {row['mae']:.3f}  "
                        f"within 0.1 {row['share_within_0.1']:.2f}  held back {row['share_held_back']:.2f}"
                    )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
