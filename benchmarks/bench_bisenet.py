"""Images per second of BiSeNet face parsing at 512x512 (random weights of the published shapes)."""

import argparse
import time

import torch

from vhuman.bisenet import BiSeNet


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = BiSeNet().eval()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {args.threads} CPU threads, input 512x512")
    for device in devices:
        net.to(device)
        for batch in args.batches:
            x = torch.randn(batch, 3, 512, 512, device=device)
            with torch.inference_mode():
                net(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(args.repeats):
                    net(x)[0].argmax(1)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            rate = batch * args.repeats / (time.perf_counter() - t)
            print(f"{device.type:4s} batch {batch:2d}: {rate:7.2f} images/s")


if __name__ == "__main__":
    main()
