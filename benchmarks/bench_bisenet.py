"""Images per second of BiSeNet face parsing at 512x512 (random weights of the published shapes, or ``--weights``),
in float32 and, side by side, in mixed precision (bfloat16 where the hardware has it, float16 on CUDA), with the
share of pixels whose label differs from float32's."""

import argparse
import time

import torch

from vhuman.bisenet import BiSeNet, load_bisenet
from vhuman.runtime import device_names, mixed_dtypes


def parse_rate(net, x, repeats, dtype):
    device = x.device
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        labels = net(x)[0].argmax(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            net(x)[0].argmax(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return x.shape[0] * repeats / (time.perf_counter() - t), labels


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", help="a 79999_iter.pth to time instead of random weights")
    ap.add_argument("--devices", nargs="+", default=device_names(), help="cpu, cuda (default: those present)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_bisenet(args.weights) if args.weights else BiSeNet().eval()
    devices = [torch.device(name) for name in args.devices]
    print(f"torch {torch.__version__}, {args.threads} CPU threads, input 512x512")
    for device in devices:
        net.to(device)
        for batch in args.batches:
            x = torch.randn(batch, 3, 512, 512, device=device)
            base, labels = parse_rate(net, x, args.repeats, torch.float32)
            print(f"{device.type:4s} torch.float32  batch {batch:2d}: {base:7.2f} images/s")
            for dtype in mixed_dtypes(device):
                rate, mixed = parse_rate(net, x, args.repeats, dtype)
                changed = float((mixed != labels).float().mean())
                print(
                    f"{device.type:4s} {str(dtype):14s} batch {batch:2d}: {rate:7.2f} images/s ({rate / base:.2f}x), "
                    f"{changed:.2%} of pixels labelled otherwise"
                )


if __name__ == "__main__":
    main()
