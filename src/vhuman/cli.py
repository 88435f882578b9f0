"""The project's commands: ``vhuman-label`` (the hand-labelling page) and ``vhuman-generate`` (faces on request).

Every argument is checked before any work starts; a bad one ends the command with one line naming it and exit
status 2, as argparse does for its own errors.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from pathlib import Path

from vhuman.labeling import serve
from vhuman.vocabulary import PROPERTY_NAMES, RANGES

SEEDS_HELP = (
    "z seeds: a range 'A-B' (A <= B, both included), a list '1,5,9', or a mix '0-3,10'; "
    "whole numbers from 0 to 2**63-1, each at most once"
)
MAX_SEED = 2**63 - 1


def parse_seeds(text: str) -> list[int]:
    """Seeds from '0-7', '1,5,9' or '0-3,10'; raises ValueError with what is wrong."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(f"{part!r} is not a seed or a range A-B of whole numbers >= 0")
        lo = int(match[1])
        hi = int(match[2]) if match[2] is not None else lo
        if hi < lo:
            raise ValueError(f"range {part!r} runs backwards; write {hi}-{lo}")
        if hi > MAX_SEED:
            raise ValueError(f"{hi} is larger than the largest seed {MAX_SEED}")
        if hi - lo >= 100_000:
            raise ValueError(f"range {part!r} has {hi - lo + 1} seeds; draw at most 100000 at a time")
        seeds.extend(range(lo, hi + 1))
    counts = Counter(seeds)
    if len(counts) != len(seeds):
        repeated = sorted(s for s, n in counts.items() if n > 1)[:5]
        raise ValueError(f"seeds repeat ({', '.join(map(str, repeated))}); each seed draws one face")
    return seeds


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def generate_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vhuman-generate",
        description="Draw faces with requested property values from results/finetuned.pth. "
        "Properties not given are drawn from the property table.",
    )
    ap.add_argument("--checkpoint", default="results/finetuned.pth")
    ap.add_argument("--properties", default="results/properties.parquet", help="table the unset values come from")
    ap.add_argument("--seeds", default="0-7", help=SEEDS_HELP)
    ap.add_argument("--out", default="results/controlled", help="output folder")
    ap.add_argument(
        "--psi", type=finite_float, help="truncation psi in [0, 1] (1: none; default: as the file's data was drawn)"
    )
    ap.add_argument(
        "--closed-loop-steps",
        type=int,
        help="corrections through the image, 0 to 10 (default: the file's; 0 draws open loop, one synthesis per face)",
    )
    for name in PROPERTY_NAMES:
        lo, hi = RANGES[name]
        ap.add_argument(f"--{name}", type=finite_float, help=f"{name} in [{lo:g}, {hi:g}]")
    return ap


def generate_main(argv=None) -> None:
    """vhuman-generate: draw faces with requested property values from a fine-tuned generator."""
    ap = generate_parser()
    args = ap.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        ap.error(f"--seeds: {exc}")
    if args.psi is not None and not 0.0 <= args.psi <= 1.0:
        ap.error(f"--psi must be in [0, 1], got {args.psi:g}")
    if args.closed_loop_steps is not None and not 0 <= args.closed_loop_steps <= 10:
        ap.error(f"--closed-loop-steps must be in 0..10, got {args.closed_loop_steps}")
    values = {n: getattr(args, n) for n in PROPERTY_NAMES if getattr(args, n) is not None}
    for name, value in values.items():
        lo, hi = RANGES[name]
        if not lo <= value <= hi:
            ap.error(f"--{name} must be in [{lo:g}, {hi:g}], got {value:g}")
    if not Path(args.properties).is_file():
        ap.error(f"--properties: {args.properties} not found (run `snakemake results/properties.parquet`)")
    # Imported here, not at the top: the labelling command shares this module and must start without torch.
    import pandas as pd

    from vhuman.conditional import load_conditional_generator
    from vhuman.io import CheckpointError, save_png, to_uint8
    from vhuman.pictures import draw_conditions, render
    from vhuman.properties import property_matrix

    try:
        model = load_conditional_generator(args.checkpoint, args.closed_loop_steps)
    except CheckpointError as exc:
        sys.exit(f"vhuman-generate: {exc}")
    c = draw_conditions(values, property_matrix(pd.read_parquet(args.properties)), len(seeds), seed=seeds[0])
    images = to_uint8(render(model, seeds, c, args.psi))
    out = Path(args.out)
    for s, img in zip(seeds, images, strict=True):
        save_png(img, out / f"seed{s:06d}.png")
    tag = ",".join(f"{k}={v:g}" for k, v in values.items()) or "drawn from the data"
    print(f"wrote {len(seeds)} images ({tag}) to {out}")


def serve_until_interrupted(server) -> None:
    """Serve a page's server until Ctrl-C, then free its port."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def label_main(argv=None) -> None:
    """vhuman-label: the hand-labelling page for the first images."""
    ap = argparse.ArgumentParser(
        prog="vhuman-label", description="Label the gender and quality of generated faces in a browser."
    )
    ap.add_argument("--images", default="results/generated/images", help="folder of generated PNGs")
    ap.add_argument("--labels", default="data/labels/manual_labels.csv", help="CSV to write (resumed if present)")
    ap.add_argument("--first", type=int, default=2000, help="label the first N images (default 2000)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    ap.add_argument("--port", type=int, default=8765, help="port, 0 to 65535 (0: any free port)")
    ap.add_argument(
        "--guess",
        choices=("cnn", "majority"),
        default="cnn",
        help="what pre-fills the grid: a CNN retrained on the labels so far (default) or the most common label",
    )
    ap.add_argument(
        "--latents",
        help="the generate stage's latents table (default: latents.parquet beside the images folder): the grid's "
        "guess adds a line in W fitted to the labels (the CNN alone where the file is missing)",
    )
    args = ap.parse_args(argv)
    if args.first < 1:
        ap.error(f"--first must be at least 1, got {args.first}")
    if not 0 <= args.port <= 65535:
        ap.error(f"--port must be in 0..65535, got {args.port}")
    note = None
    if args.guess == "cnn":
        from vhuman.label_guesser import CNNGuess  # torch only for the grid's model

        latents = Path(args.latents or Path(args.images).parent / "latents.parquet")
        if not latents.is_file():
            note, latents = f"{latents} not found: the grid guesses with the CNN alone", None
    try:
        guesser = CNNGuess(args.images, latents=latents) if args.guess == "cnn" else None
        server = serve(args.images, args.labels, args.first, args.host, args.port, guesser)
    except (FileNotFoundError, ValueError, OSError) as exc:
        sys.exit(f"vhuman-label: {exc}")
    print(
        f"Labelling page: {server.url}\n(open this URL: its token admits only this page; the grid of guesses is "
        f"linked from it; Ctrl-C to stop; labels are saved on every key press to {args.labels})",
        flush=True,
    )
    if note:
        print(note, flush=True)
    serve_until_interrupted(server)


def studio_main(argv=None) -> None:
    """vhuman-studio: the live control page of the fine-tuned generator."""
    ap = argparse.ArgumentParser(
        prog="vhuman-studio", description="Move a slider per property and watch the fine-tuned generator's face change."
    )
    ap.add_argument("--checkpoint", default="results/finetuned.pth", help="the fine-tuned generator")
    ap.add_argument("--out", default="results/studio", help="folder the saved PNGs and GIFs go to")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    ap.add_argument("--port", type=int, default=8766, help="port, 0 to 65535 (0: any free port)")
    ap.add_argument("--device", default="cpu", help="torch device to draw on (cpu, cuda, ...)")
    args = ap.parse_args(argv)
    if not 0 <= args.port <= 65535:
        ap.error(f"--port must be in 0..65535, got {args.port}")
    from vhuman.studio import serve_studio  # torch only for this command

    try:
        server = serve_studio(args.checkpoint, args.out, args.host, args.port, args.device)
    except (ValueError, OSError, RuntimeError) as exc:
        sys.exit(f"vhuman-studio: {exc}")
    problem = server.studio.error
    print(
        f"Studio page: {server.url}\n(open this URL: its token admits only this page; Ctrl-C to stop; saved faces go "
        f"to {args.out})"
        + (f"\nnote: {problem} (the page says so; reload it once the file is there)" if problem else ""),
        flush=True,
    )
    serve_until_interrupted(server)
