"""MobileStyleGAN-FFHQ, ours against OpenVINO's execution of the same IR files, side by side in one run.

Images per second of the whole generator (mapping and synthesis to the 1024x1024 image) at each batch size, for
OpenVINO (float32), ours in float32 with and without transparent huge pages for large tensors (``vhuman`` turns
them on; see its ``__init__``), and ours under bfloat16 autocast where the CPU has bfloat16 units. Every variant
runs in its own process (the huge-page setting is read once per process), in rounds that alternate the variants, and
the median over rounds is reported. Also the largest image difference to OpenVINO, in float32 and bfloat16.

    pip install openvino   # the reference only; the workflow never imports it
    python benchmarks/bench_mobilestylegan.py --out results/benchmarks/mobilestylegan.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from vhuman.latents import latent_for_seed, truncate
from vhuman.mobilestylegan_ir import generator_from_ir
from vhuman.runtime import cpu_has_bfloat16
from vhuman.weights import members_from_package_archive

REPO = Path(__file__).resolve().parents[1]


def ir_files() -> dict[str, Path]:
    archive = yaml.safe_load((REPO / "config" / "mobilestylegan_ffhq.yaml").read_text())["generator"]["package_archive"]
    files = members_from_package_archive(archive, archive["members"], "bench_mobilestylegan")
    return {Path(member).name: path for member, path in files.items()}


def openvino_generator(files: dict[str, Path], batch: int, threads: int):
    import openvino as ov

    core = ov.Core()
    hints = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    nets = []
    for name in ("MappingNetwork", "SynthesisNetwork"):
        model = core.read_model(files[f"{name}.xml"], files[f"{name}.bin"])
        model.reshape([batch, 512])
        nets.append(core.compile_model(model, "CPU", hints))
    mapping, synthesis = nets
    return lambda z: synthesis(mapping(z.numpy())[0])[0]


def our_generator(files: dict[str, Path], dtype: torch.dtype):
    gen = generator_from_ir(files, resolution=1024)

    def draw(z):
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return gen.synthesis(truncate(gen.mapping(z), gen.w_avg, gen.num_layers)).float()

    return draw


def worker(variant: str, batch: int, repeats: int, threads: int) -> None:
    torch.set_num_threads(threads)
    files = ir_files()
    if variant == "openvino":
        draw = openvino_generator(files, batch, threads)
    else:
        draw = our_generator(files, torch.bfloat16 if variant == "ours_bfloat16" else torch.float32)
    z = torch.randn(batch, 512, generator=torch.Generator().manual_seed(batch))
    draw(z)  # warm-up: compiled kernels, cached weights, first-touch pages
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        draw(z)
        times.append(time.perf_counter() - t)
    print(json.dumps({"images_per_second": batch / statistics.median(times)}))


def run_worker(variant: str, batch: int, repeats: int, threads: int) -> float:
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0" if variant == "ours_float32_small_pages" else "1"}
    cmd = [sys.executable, __file__, "--worker", variant, "--batch", str(batch), "--repeats", str(repeats)]
    proc = subprocess.run([*cmd, "--threads", str(threads)], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["images_per_second"]


def largest_errors(files: dict[str, Path], threads: int) -> dict:
    """Largest |ours - OpenVINO| over 4 faces at 1024 pixels (images in about [-1, 1]), at psi 1 and 0.5."""
    torch.set_num_threads(threads)
    ours = generator_from_ir(files, resolution=1024)
    reference = reference_synthesis(files, threads)
    z = torch.stack([latent_for_seed(1000 + i, 512) for i in range(4)])
    out = {}
    for psi in (1.0, 0.5):
        with torch.inference_mode():
            w = ours.mapping(z)
            w = ours.w_avg + psi * (w - ours.w_avg)
            theirs = np.concatenate([reference(w[i : i + 1].numpy()) for i in range(4)])
            for name, dtype in [("float32", torch.float32)] + ([("bfloat16", torch.bfloat16)] * cpu_has_bfloat16()):
                with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                    mine = ours.synthesis(truncate(w, ours.w_avg, ours.num_layers)).float().numpy()
                out[f"{name}_psi{psi}"] = float(np.abs(mine - theirs).max())
    return out


def reference_synthesis(files: dict[str, Path], threads: int):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(files["SynthesisNetwork.xml"], files["SynthesisNetwork.bin"])
    net = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    return lambda w: net(w)[0]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per process (median)")
    ap.add_argument("--rounds", type=int, default=3, help="processes per variant, alternating (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.batch, args.repeats, args.threads)
    import openvino

    files = ir_files()
    variants = ["openvino", "ours_float32", "ours_float32_small_pages"] + ["ours_bfloat16"] * cpu_has_bfloat16()
    rates = {(v, b): [] for v in variants for b in args.batches}
    for r in range(args.rounds):
        for batch in args.batches:
            for variant in variants:
                rates[variant, batch].append(run_worker(variant, batch, args.repeats, args.threads))
                print(f"round {r + 1}: {variant} batch {batch}: {rates[variant, batch][-1]:.2f} images/s", flush=True)
    result = {
        "machine": {"cpu": cpu_name(), "threads": args.threads, "bfloat16_units": cpu_has_bfloat16()},
        "versions": {"torch": torch.__version__, "openvino": openvino.__version__},
        "images_per_second": {f"{v}_batch{b}": statistics.median(rates[v, b]) for v, b in rates},
        "largest_error_vs_openvino": largest_errors(files, args.threads),
    }
    for batch in args.batches:
        ratio = (
            result["images_per_second"][f"ours_float32_batch{batch}"]
            / result["images_per_second"][f"openvino_batch{batch}"]
        )
        result[f"ours_over_openvino_float32_batch{batch}"] = ratio
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
