"""How well a ridge line in W calls hand labels it was not fitted to: the labelling grid's latent guess, offline.

The line (vhuman.label_guesser.LatentLine, its ridge cross-validated) is fitted to the first N labels of a labels
CSV and calls the gender of every later labelled face; the share it calls as labelled is printed per N.

    python benchmarks/bench_label_line.py --labels data/labels/manual_labels.csv \
        --latents results/generated/latents.parquet
"""

import argparse
import json

import numpy as np

from vhuman.io import latent_codes
from vhuman.label_guesser import LatentLine
from vhuman.labeling import read_labels


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="data/labels/manual_labels.csv")
    ap.add_argument("--latents", default="results/generated/latents.parquet")
    ap.add_argument("--fitted", default="100,200,400,800", help="numbers of first labels to fit the line to")
    args = ap.parse_args()
    labels = read_labels(args.labels).sort_values("image_id")
    codes = latent_codes(args.latents)
    w = np.stack([codes[i] for i in labels["image_id"]])
    female = (labels["gender"].to_numpy() == "female").astype(np.float64)
    figures = []
    for n in (int(k) for k in args.fitted.split(",")):
        if n >= len(labels):
            continue
        p = LatentLine(w[:n], female[:n, None])(w[n:])[:, 0]
        right = float(((p > 0.5) == female[n:]).mean())
        figures.append({"fitted": n, "called": len(w) - n, "share_as_labelled": right})
        print(f"fitted to the first {n}: {figures[-1]['share_as_labelled']:.3f} of the next {len(w) - n} as labelled")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
