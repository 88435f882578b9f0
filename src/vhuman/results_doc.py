"""docs/results.md and the README's headline table, written from one run's own JSON files, so that every figure in
the docs is that run's. ``python -m vhuman.results_doc results`` copies the run's files into ``docs/run/`` and
writes both; ``--check`` rewrites nothing and fails when a committed table differs from what the files give."""

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from vhuman.atomic import atomic_path
from vhuman.vocabulary import PROPERTY_NAMES

# The run's files that the tables are made from: name in docs/run/ -> path under the run's results/.
RUN_FILES = {
    "stage_times.json": "benchmarks/stage_times.json",
    "control.json": "evaluation/control.json",
    "gender_truth_check.json": "gender/truth_check.json",
    "subset_summary.json": "subset/summary.json",
    "parser_metrics.json": "segmentation/parser_metrics.json",
    "parser_truth_check.json": "segmentation/truth_check.json",
    "properties_truth_check.json": "properties/truth_check.json",
    "regressor_metrics.json": "finetune/regressor_metrics.json",
}
# Two of the run's sweeps, shown on the results page: name in docs/run/ -> path under results/.
RUN_PICTURES = {
    "finetuned_face_pose.png": "evaluation/sweeps/finetuned_face_pose.png",
    "finetuned_eyes.png": "evaluation/sweeps/finetuned_eyes.png",
}
# The evaluation's variants, in the order a reader compares them, and what each costs per face.
VARIANTS = {
    "finetuned_open_loop": "fine-tuned, open loop (one synthesis)",
    "finetuned": "fine-tuned, as saved (the critic's loop, 2 steps)",
    "finetuned_measured_loop": "fine-tuned, with the measured loop (2 steps)",
    "directions": "directions baseline (one synthesis)",
    "directions_closed_loop": "directions baseline, the critic's loop",
    "directions_measured_loop": "directions baseline, the measured loop",
}
COST_WORDS = {
    "syntheses": ("synthesis", "syntheses"),
    "critic_passes": ("critic pass", "critic passes"),
    "parser_passes": ("parser pass", "parser passes"),
    "latent_model_steps": ("latent-model step", "latent-model steps"),
}
BEGIN, END = "<!-- results:begin (written by `make docs`) -->", "<!-- results:end -->"


def collect(results_dir: Path, run_dir: Path, files: dict | None = None) -> None:
    """Copy the run's files into ``run_dir``; a missing one names the rule that writes it."""
    for name, rel in (files or {**RUN_FILES, **RUN_PICTURES}).items():
        source = Path(results_dir) / rel
        if not source.is_file():
            raise FileNotFoundError(f"{source} not found: run the whole DAG first (`make run`)")
        with atomic_path(Path(run_dir) / name) as tmp:
            shutil.copyfile(source, tmp)


def load_run(run_dir: Path, files: dict = RUN_FILES) -> dict:
    return {name: json.loads((Path(run_dir) / name).read_text()) for name in files}


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def share(value) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def r_values(block: dict) -> list[float]:
    """The defined Pearson r of a variant's per-property block (a property nothing could measure has none)."""
    return [block[name]["pearson_r"] for name in PROPERTY_NAMES if block[name]["pearson_r"] is not None]


def r_range(block: dict) -> str:
    rs = r_values(block)
    return f"{fmt(min(rs))}–{fmt(max(rs))}" if rs else "–"


def stamp(run: dict) -> str:
    times = run["stage_times.json"]
    machine, origin = times["machine"], times.get("run", {})
    configs = ", ".join(f"`{c}`" for c in origin.get("configfiles", [])) or "the embedded default"
    commit = origin.get("commit", "unknown")
    span = times.get("span")
    wall = (
        f", {span['wall_seconds'] / 60:.1f} minutes from its first rule's start to its last rule's end "
        f"({span['first_start']} to {span['last_end']})"
        if span
        else ""
    )
    return (
        f"One run of the whole DAG: commit `{commit}`, configuration {configs}, on {machine['cpu']} "
        f"({machine['cores']} cores, precision {machine.get('precision', 'unknown')}); "
        f"{times['total_seconds'] / 60:.1f} minutes summed over its rules{wall}."
    )


def stages_table(run: dict) -> list[str]:
    gender, subset = run["gender_truth_check.json"], run["subset_summary.json"]
    parser, parsed = run["parser_metrics.json"], run["parser_truth_check.json"]["generated_images"]
    props, critic = run["properties_truth_check.json"], run["regressor_metrics.json"]
    prop_r = ", ".join(f"{n} {fmt(props[n]['pearson_r'])}" for n in PROPERTY_NAMES)
    return [
        "| stage | measured against the world's truth |",
        "|---|---|",
        f"| gender CNN, the {gender['model_labelled']:,} images without hand labels | AUROC gender "
        f"{fmt(gender['gender_auroc'], 4)}, quality {fmt(gender['quality_auroc'], 4)} |",
        f"| female subset (p_female ≥ {subset['min_p_female']}, p_good ≥ {subset['min_p_good_quality']}) | "
        f"{subset['female_subset']:,} of {subset['images']:,} images; precision female "
        f"{fmt(gender['subset_female_precision'], 4)}, good quality "
        f"{fmt(gender['subset_good_quality_precision'], 4)} |",
        f"| world parser | mIoU {fmt(parser['held_out_renders']['miou'])} on held-out renders, "
        f"{fmt(parsed['miou'])} on the {parsed['images']:,} kept images |",
        f"| properties from the parser's masks ({props['images']:,} kept images) | Pearson r: {prop_r} |",
        f"| property regressor (the fine-tune's critic), {critic['held_out_images']:,} images held out | "
        f"r {r_range(critic)} |",
    ]


def control_table(variant: dict, by: str) -> list[str]:
    rows = [
        "| property | r | MAE | spread across z | within ±0.1 | unmeasured move | perfect controller r |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in PROPERTY_NAMES:
        m = variant[by][name]
        perfect = m.get("perfect_controller", {}).get("pearson_r")
        rows.append(
            f"| {name} | {fmt(m['pearson_r'])} | {fmt(m['mae'])} | {fmt(m['spread_across_z'])} | "
            f"{share(m['share_within_0.1'])} | {fmt(m.get('unmeasured_attributes_movement'))} | {fmt(perfect)} |"
        )
    return rows


def control_section(control: dict) -> list[str]:
    lines = []
    for key, title in VARIANTS.items():
        if key not in control:
            continue
        variant = control[key]
        by = "truth" if "truth" in variant else "parser"
        cost = ", ".join(f"{v} {COST_WORDS[k][v != 1]}" for k, v in variant["cost_per_face"].items() if v)
        lines += [f"### {title}", "", f"Per face: {cost}. Measured by the {by}.", ""]
        lines += control_table(variant, by) + [""]
        faces = variant.get("female_rate_faces", variant["images"])
        read = f" (on {faces:,} of the {variant['images']:,} faces)" if faces < variant["images"] else ""
        rates = [f"female rate by the gender CNN{read} {fmt(variant.get('female_rate'))}"]
        if "female_rate_truth" in variant:
            rates.append(f"by the world's truth {fmt(variant['female_rate_truth'])}")
        if by == "truth" and "parser" in variant:
            rates.append(f"r measured through the parser instead {r_range(variant['parser'])}")
        lines += ["; ".join(rates) + ".", ""]
    return lines


def times_table(times: dict) -> list[str]:
    rows = ["| rule | seconds | peak memory (MB) |", "|---|---|---|"]
    for r in times["rules"]:
        rows.append(f"| `{r['rule']}` | {fmt(r['seconds'], 0)} | {fmt(r['max_rss_mb'], 0)} |")
    rows.append(f"| **sum** | **{fmt(times['total_seconds'], 0)}** | |")
    return rows


def results_markdown(run: dict) -> str:
    control = run["control.json"]
    lines = ["# Results of the embedded default", "", "*Written by `make docs` from `docs/run/`; do not edit.*", ""]
    lines += [stamp(run), "", "## Stages", ""] + stages_table(run) + [""]
    lines += [
        "## Control",
        "",
        f"Each property swept over {control['finetuned']['levels']} requested levels for "
        f"{control['finetuned']['num_z']} random z, the other properties drawn from the data. r and MAE: the "
        "request against the drawn face's value; spread: the drawn value's standard deviation across z at one "
        "level; within ±0.1: in the property's own units; unmeasured move: how much the world's attributes that no "
        "property measures change along a sweep; perfect controller: each request moved to the nearest value the "
        "world can draw, the ceiling of any controller.",
        "",
    ]
    lines += control_section(control)
    caption = (
        "The fine-tuned generator as saved, four faces (rows), one property requested across its range (columns): "
        "`face_pose` from -1 to +1, then `eyes` from 0 to 1."
    )
    return "\n".join(lines + sweeps_and_times(caption, "run", RUN_PICTURES, run["stage_times.json"]))


def sweeps_and_times(caption: str, folder: str, pictures, times: dict) -> list[str]:
    """A results page's last two sections: its sweep pictures (in ``folder``, beside the page) and stage times."""
    shown = [f"![{Path(name).stem}]({folder}/{name})" for name in pictures]
    return ["## Sweeps", "", caption, "", *shown, "", "## Stage times", "", *times_table(times), ""]


def headline_markdown(run: dict) -> str:
    control, gender = run["control.json"], run["gender_truth_check.json"]
    props = run["properties_truth_check.json"]
    lowest_prop = min(PROPERTY_NAMES, key=lambda n: props[n]["pearson_r"])
    lines = [
        "| variant (embedded default, against the world's truth) | Pearson r over the 7 properties | female rate |",
        "|---|---|---|",
    ]
    for key, title in VARIANTS.items():
        if key in control and "truth" in control[key]:
            v = control[key]
            lines.append(f"| {title} | {r_range(v['truth'])} | {fmt(v.get('female_rate_truth'))} |")
    lines += [
        "",
        f"Gender AUROC {fmt(gender['gender_auroc'])}; female subset precision "
        f"{fmt(gender['subset_female_precision'])}; properties from the parser r ≥ "
        f"{fmt(props[lowest_prop]['pearson_r'])} ({lowest_prop}). {stamp(run)} Every figure: "
        "[docs/results.md](docs/results.md).",
    ]
    return "\n".join(lines)


def with_headline(readme: str, headline: str, begin: str = BEGIN, end: str = END) -> str:
    if begin not in readme or end not in readme:
        raise ValueError(f"the README has no {begin} ... {end} block for the headline table")
    head, rest = readme.split(begin, 1)
    return f"{head}{begin}\n{headline}\n{end}{rest.split(end, 1)[1]}"


def arguments(prog: str, description: str, run: str, page: str, argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("results", nargs="?", help="a finished run's results/ to take the files from")
    ap.add_argument("--run", default=run, help="where the run's files are kept")
    ap.add_argument("--results-md", default=page, help="the results page")
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--check", action="store_true", help="fail when the committed tables differ; write nothing")
    return ap.parse_args(argv)


def write_or_check(wanted: dict[Path, str], args, make_target: str) -> None:
    """Write the pages, or with ``--check`` fail when a committed one differs (naming the make target)."""
    stale = [str(p) for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        if stale:
            sys.exit(f"{', '.join(stale)} differ from the tables of {args.run}: run `make {make_target}`")
        return
    for path, text in wanted.items():
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    print(f"wrote {', '.join(str(p) for p in wanted)} from {args.run}")


def main(argv=None) -> None:
    args = arguments("python -m vhuman.results_doc", __doc__.splitlines()[0], "docs/run", "docs/results.md", argv)
    if args.results and not args.check:
        collect(Path(args.results), Path(args.run))
    run = load_run(Path(args.run))
    readme = with_headline(Path(args.readme).read_text(), headline_markdown(run))
    write_or_check({Path(args.results_md): results_markdown(run), Path(args.readme): readme}, args, "docs")


if __name__ == "__main__":
    main()
