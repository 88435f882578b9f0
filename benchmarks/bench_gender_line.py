"""Whether the directions' female row turns a male MobileStyleGAN-FFHQ face female, at a fixed small ridge and at
the cross-validated one (`vhuman.ridge`).

Needs the real weights (fetched once per machine; `make test-real` fetches them) and the judges' extra
(`pip install -e '.[judges]'`):

    .venv/bin/python benchmarks/bench_gender_line.py --faces 480 --out gender_line.json

It draws the faces as the real-face configuration does (seeds 0..N-1, psi 0.7 on all 23 style inputs), labels
them with the hand-label stand-in (as the 2-core configuration labels its first faces), fits the female line
p_female ~ w on the first 80 %, and moves each held-out male face to where the line reads 1 (the directions'
female target). The same stand-in reads the edited faces; dlib's detector is not needed for the count of faces
found because the stand-in returns no label without a face.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from vhuman.generators import fetch_mobilestylegan, load_generator
from vhuman.hand_label_stand_in import HandLabelStandIn
from vhuman.io import to_uint8
from vhuman.latents import latent_for_seed, truncate
from vhuman.ridge import cross_validated_ridge_line, ridge_line

CONFIG = Path(__file__).resolve().parents[1] / "config" / "mobilestylegan_ffhq.yaml"


def draw(generator, w: np.ndarray, psi: float, layers: int, batch: int = 8) -> np.ndarray:
    images = []
    with torch.inference_mode():
        for s in range(0, len(w), batch):
            codes = truncate(
                torch.from_numpy(w[s : s + batch]).float(), generator.w_avg, generator.num_layers, psi, layers
            )
            images.append(to_uint8(generator.synthesis(codes)))
    return np.concatenate(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=480)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    config = yaml.safe_load(CONFIG.read_text())["generator"]
    psi, layers = config["truncation_psi"], config["truncation_layers"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mobilestylegan.pth"
        fetch_mobilestylegan(path, config["package_archive"], 256)
        generator = load_generator(path, resolution=256).eval()
    stand_in = HandLabelStandIn()
    with torch.inference_mode():
        z = torch.stack([latent_for_seed(i, generator.z_dim) for i in range(args.faces)])
        w = generator.mapping(z).double().numpy()
    p = np.array([stand_in.label(image)[2] for image in draw(generator, w, psi, layers)])
    labelled = ~np.isnan(p)
    fit = (np.arange(args.faces) < int(0.8 * args.faces)) & labelled
    held = ~(np.arange(args.faces) < int(0.8 * args.faces)) & labelled
    males = np.flatnonzero(held & (p < 0.5))
    gap = w[fit & (p >= 0.5)].mean(0) - w[fit & (p < 0.5)].mean(0)
    result = {"faces": args.faces, "fitted_on": int(fit.sum()), "held_out_males": len(males), "lines": {}}
    lines = {
        "ridge 0.01": (*ridge_line(w[fit], p[fit], 1e-2), 1e-2),
        "cross-validated": cross_validated_ridge_line(w[fit], p[fit]),
    }
    for name, (coef, bias, ridge) in lines.items():
        reading = w @ coef + bias
        edited = w[males] + np.outer(1.0 - reading[males], coef / (coef @ coef))
        after = np.array([stand_in.label(image)[2] for image in draw(generator, edited, psi, layers)])
        result["lines"][name] = {
            "ridge": ridge,
            "held_out_r": float(np.corrcoef(reading[held], p[held])[0, 1]),
            "cosine_to_the_class_mean_gap": float(coef @ gap / np.linalg.norm(coef) / np.linalg.norm(gap)),
            "edit_norm_median": float(np.median(np.linalg.norm(edited - w[males], axis=1))),
            "female_after_edit": float(np.nanmean(after >= 0.5)),
            "face_found": float(np.mean(~np.isnan(after))),
        }
    result["class_mean_gap_norm"] = float(np.linalg.norm(gap))
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
