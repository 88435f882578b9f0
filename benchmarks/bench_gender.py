"""Images per second of the gender / quality ensemble at inference (5 folds, mirrored test-time augmentation)."""

import argparse
import time

import torch

from vhuman.gender import GenderQualityNet, predict


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = [GenderQualityNet(32).eval() for _ in range(args.folds)]
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8)
    predict(models[0], images[:64])  # warm-up
    t = time.perf_counter()
    for m in models:
        predict(m, images)
    rate = args.images / (time.perf_counter() - t)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.size}x{args.size}, {args.folds} folds: "
        f"{rate:.1f} images/s"
    )


if __name__ == "__main__":
    main()
