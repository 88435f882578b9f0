"""One fine-tune step at the real configuration's size, float32 against mixed precision, side by side.

GenForce StyleGAN 256 (random weights, with its discriminator), the real config's critic size and fine-tune
settings, random conditions and real images: speed does not depend on the values. Each precision the device has
natively (bfloat16 on a CPU with AVX-512 BF16 / AMX; float16 and bfloat16 on CUDA; float16 with loss scaling)
runs the same steps as float32; the script prints seconds per step and the ratio to float32, and on CUDA the
peak GPU memory.

    .venv/bin/python benchmarks/bench_finetune_step.py [--cpu-batch 2] [--cuda-batch 16] [--steps 3]
"""

import argparse
import time

import numpy as np
import pandas as pd
import torch
import yaml

from vhuman.discriminator import StyleGANDiscriminator
from vhuman.finetune import Finetune, FinetuneSettings
from vhuman.regressor import PropertyRegressor
from vhuman.runtime import device_names, mixed_dtypes, precision_scope
from vhuman.stylegan import StyleGANGenerator
from vhuman.vocabulary import PROPERTY_NAMES, RANGES

REAL = "config/stylegan_celeba_partial256.yaml"


def random_world(n: int, resolution: int, gen: torch.Generator):
    """A property table, its images and latent directions with the real shapes and random values."""
    table = {}
    for name in PROPERTY_NAMES:
        lo, hi = RANGES[name]
        table[name] = lo + (hi - lo) * torch.rand(n, generator=gen).numpy()
        table[f"{name}_valid"] = np.ones(n, bool)
    images = torch.randint(0, 256, (n, 3, resolution, resolution), dtype=torch.uint8, generator=gen)
    rows = len(PROPERTY_NAMES) + 1
    directions = {
        "weights": torch.randn(rows, 512, generator=gen) / 512**0.5,
        "bias": torch.zeros(rows),
        "fixed_targets": torch.ones(1),
        "layer_mask": torch.ones(rows, 14),
    }
    return pd.DataFrame(table), images, directions


def seconds_per_step(device, precision, batch, steps, world, settings) -> float:
    properties, images, directions = world
    torch.manual_seed(0)
    base = StyleGANGenerator(256).eval()
    checkpoint = {"discriminator": StyleGANDiscriminator(256).state_dict()}
    critic = PropertyRegressor(settings["critic_width"], settings["critic_input"])
    train = FinetuneSettings(**{**settings["train"], "batch_size": batch, "steps": steps})
    with precision_scope(device, precision):
        run = Finetune(base, checkpoint, critic, properties, images, train, device, directions, {})
        for step in range(steps + 1):  # the first step warms up (kernels, allocator) and is not timed
            if step == 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            batch_ = run.draw_batch()
            _, fakes, cn = run.generator_step(batch_)
            run.discriminator_step(batch_, fakes, cn, step)
            run.update_ema()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-batch", type=int, default=2)
    ap.add_argument("--cuda-batch", type=int, default=16, help="the real config's fine-tune batch")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--devices", nargs="+", default=device_names(), help="cpu, cuda (default: those present)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    real = yaml.safe_load(open(REAL))["finetune"]
    settings = {
        "train": real["train"],
        "critic_width": real["regressor"]["width"],
        "critic_input": real["regressor"]["input_size"],
    }
    world = random_world(64, 256, torch.Generator().manual_seed(0))
    devices = [torch.device(name) for name in args.devices]
    print(f"torch {torch.__version__}, {args.threads} CPU threads, StyleGAN 256, real config fine-tune settings")
    for device in devices:
        batch = args.cuda_batch if device.type == "cuda" else args.cpu_batch
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        base = None
        for dtype in [torch.float32] + mixed_dtypes(device):
            precision = str(dtype).removeprefix("torch.")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = seconds_per_step(device, precision, batch, args.steps, world, settings)
            base = base or seconds
            memory = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
            print(
                f"{name}: batch {batch}, {precision:8s} {seconds:7.3f} s/step, {base / seconds:4.2f}x float32{memory}",
                flush=True,
            )


if __name__ == "__main__":
    main()
