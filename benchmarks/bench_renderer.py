"""Images per second of the synthetic face renderer (CPU, torch threads as given)."""

import argparse
import time

import torch

from vhuman.synthetic import render_faces, sample_face_params


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    for res in args.resolutions:
        params = sample_face_params(args.batch, seed=0)
        with torch.inference_mode():
            render_faces(params, res)  # warm-up
            t = time.perf_counter()
            for _ in range(args.repeats):
                render_faces(params, res)
            dt = (time.perf_counter() - t) / args.repeats
        print(f"{res}x{res}: {args.batch / dt:8.1f} images/s")


if __name__ == "__main__":
    main()
