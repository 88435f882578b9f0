"""Images per second of the GenForce StyleGAN generator at 256x256 (celeba-partial-256x256 shapes).

Weights are random with the real checkpoint's shapes: speed does not depend on their values. Use
``--checkpoint`` to time a real file instead.
"""

import argparse
import time

import torch

from vhuman.generators import load_generator
from vhuman.runtime import device_names, mixed_dtypes
from vhuman.stylegan import StyleGANGenerator


def time_batches(generator, device, batch, repeats, dtype):
    z = torch.randn(batch, generator.z_dim, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        wp = generator.truncation(generator.mapping(z), 0.7, 8)
        generator.synthesis(wp)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            generator.synthesis(generator.truncation(generator.mapping(z), 0.7, 8))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--devices", nargs="+", default=device_names(), help="cpu, cuda (default: those present)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    generator = load_generator(args.checkpoint) if args.checkpoint else StyleGANGenerator(256)
    generator.eval()
    devices = [torch.device(name) for name in args.devices]
    print(f"torch {torch.__version__}, {args.threads} CPU threads, {generator.resolution}x{generator.resolution}")
    for device in devices:
        generator.to(device)
        if device.type == "cuda":
            # Half precision is only worth having if it draws the same picture: within 1/255 of float32.
            z = torch.randn(8, generator.z_dim, device=device)
            with torch.inference_mode():
                wp = generator.truncation(generator.mapping(z), 0.7, 8)
                full = generator.synthesis(wp)
                with torch.autocast("cuda", dtype=torch.float16):
                    half = generator.synthesis(wp).float()
            gap = float((full - half).abs().max()) / 2  # images span [-1, 1]: 2 units = 255 levels
            verdict = "within" if gap <= 1 / 255 else "beyond"
            print(f"cuda float16 vs float32: max difference {gap * 255:.2f}/255 ({verdict} 1/255)")
        dtypes = [torch.float32] + mixed_dtypes(device)
        for batch in args.batches:
            base = time_batches(generator, device, batch, args.repeats, torch.float32)
            print(f"{device.type:4s} torch.float32  batch {batch:3d}: {base:8.2f} images/s")
            for dtype in dtypes[1:]:
                ips = time_batches(generator, device, batch, args.repeats, dtype)
                print(f"{device.type:4s} {str(dtype):14s} batch {batch:3d}: {ips:8.2f} images/s ({ips / base:.2f}x)")


if __name__ == "__main__":
    main()
