"""docs/results_real.md and the README's real-face table, written from one real-face run's own JSON files (no truth:
the workflow's measurement beside dlib's judges, against the control targets). ``python -m vhuman.results_real
results`` copies the run's files into ``docs/run_real/`` and writes both; ``--check`` rewrites nothing and fails when
a committed table differs from what the files give."""

from pathlib import Path

from PIL import Image

from vhuman.atomic import atomic_path
from vhuman.results_doc import (
    COST_WORDS,
    VARIANTS,
    arguments,
    collect,
    fmt,
    load_run,
    r_range,
    r_values,
    share,
    stamp,
    sweeps_and_times,
    with_headline,
    write_or_check,
)
from vhuman.vocabulary import PROPERTY_NAMES

# The run's files, its pictures, and the README block its headline goes into.
REAL_RUN_FILES = {
    "stage_times.json": "benchmarks/stage_times.json",
    "control.json": "evaluation/control.json",
    "gender_metrics.json": "gender/metrics.json",
    "subset_summary.json": "subset/summary.json",
    "properties_judge_check.json": "properties/judge_check.json",
    "regressor_metrics.json": "finetune/regressor_metrics.json",
}
# Kept as half-size JPEGs: six full sweeps are 13 MB of PNG.
REAL_RUN_PICTURES = {
    f"{variant}_{name}.jpg": f"evaluation/sweeps/{variant}_{name}.png"
    for variant in ("finetuned", "directions")
    for name in ("face_pose", "eyes", "mouth")
}
REAL_BEGIN, REAL_END = "<!-- real-results:begin (written by `make docs-real`) -->", "<!-- real-results:end -->"
JUDGED_PROPERTIES = ("eyes", "mouth", "face_pose")
# The README's real-face rows: one pass and the critic's loop of each method (the measured loops: the results page).
README_REAL_VARIANTS = ("finetuned_open_loop", "finetuned", "directions", "directions_closed_loop")
# The targets control on real faces is held to: by the workflow's measurement, by the landmark judges, by dlib's
# descriptor and detector, by the stand-in gender classifier.
LOOPED = ("finetuned", "finetuned_measured_loop", "directions_closed_loop", "directions_measured_loop")
WORKFLOW_R_TARGET = {"loop": 0.95, "one pass": 0.90}
JUDGE_R_TARGET = {"eyes": 0.85, "mouth": 0.85, "face_pose": 0.90}
SHARE_TARGETS = {"same_person_share": 0.95, "female_rate_stand_in": 0.95, "faces_found": 0.99}


def met(value, target) -> str:
    return "–" if value is None else ("yes" if value >= target else "**no**")


def workflow_r_target(key: str) -> float:
    return WORKFLOW_R_TARGET["loop" if key in LOOPED else "one pass"]


def real_stages_table(run: dict) -> list[str]:
    gender, subset = run["gender_metrics.json"], run["subset_summary.json"]
    check, critic = run["properties_judge_check.json"], run["regressor_metrics.json"]
    judged = check["judges"]
    agreement = ", ".join(
        f"{name} {fmt(judged[name]['pearson_r'])} ({judged[name]['judged']:,} faces)"
        for name in (*JUDGED_PROPERTIES, "background_light")
    )
    cv = gender["out_of_fold"]["gender"]
    return [
        "| stage | measured |",
        "|---|---|",
        f"| gender CNN, out of fold on the {gender['hand_labels']:,} hand labels ({gender['folds']} folds) | AUROC "
        f"{fmt(cv['auroc'], 4)}, accuracy {fmt(cv['accuracy'], 4)} |",
        f"| female subset (p_female ≥ {subset['min_p_female']}, p_good ≥ {subset['min_p_good_quality']}) | "
        f"{subset['female_subset']:,} of {subset['images']:,} images |",
        f"| properties against dlib's readings of the same {judged['images']:,} kept faces (a face found in "
        f"{share(judged['faces_found'])}) | Pearson r: {agreement} |",
        f"| property regressor (the fine-tune's critic), {critic['held_out_images']:,} images held out | "
        f"r {r_range(critic) if all(n in critic for n in PROPERTY_NAMES) else '–'} |",
    ]


def range_table(check: dict) -> list[str]:
    ranges = check["ranges"]
    rows = ["| property | valid | at the low end | at the high end |", "|---|---|---|---|"]
    for name in PROPERTY_NAMES:
        r = ranges[name]
        high = share(r["at_high_share"])
        if "cut_off_by_frame_share" in r:
            high += f" (cut off by the frame: {share(r['cut_off_by_frame_share'])})"
        rows.append(f"| {name} | {share(r['valid_share'])} | {share(r['at_low_share'])} | {high} |")
    return rows


def real_control_table(variant: dict) -> list[str]:
    rows = [
        "| property | sweep | r | MAE | spread across z | within ±0.1 | judges' r |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in PROPERTY_NAMES:
        m, lo_hi = variant["parser"][name], variant.get("sweep_bounds", {}).get(name)
        judged = variant["judges"].get(name, {}).get("pearson_r")
        sweep = "–" if lo_hi is None else f"{lo_hi[0]:.2f}..{lo_hi[1]:.2f}"
        rows.append(
            f"| {name} | {sweep} | {fmt(m['pearson_r'])} | {fmt(m['mae'])} | {fmt(m['spread_across_z'])} | "
            f"{share(m['share_within_0.1'])} | {fmt(judged)} |"
        )
    return rows


def real_variant_summary(variant: dict) -> str:
    judged = variant["judges"]
    realism = judged.get("realism") or {}
    parts = [
        f"a face found in {share(judged['faces_found'])}",
        f"the sweep's first person in {share(judged['same_person_share'])}",
        f"female by the stand-in classifier {share(judged.get('female_rate_stand_in'))}, by the gender CNN "
        f"{share(variant.get('female_rate'))}",
    ]
    if realism.get("frechet_distance") is not None:
        parts.append(
            f"Fréchet distance to the base generator's faces {realism['frechet_distance']:.3f} (floor "
            f"{realism['split_half_floor']:.3f}, {realism['faces']} faces each)"
        )
    return "; ".join(parts) + "."


def targets_table(control: dict) -> list[str]:
    head = ["workflow's r", *(f"judges' r {n}" for n in JUDGED_PROPERTIES), "same person", "female", "face found"]
    rows = ["| variant | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for key, title in VARIANTS.items():
        if key not in control:
            continue
        v, judged = control[key], control[key]["judges"]
        lowest = min(r_values(v["parser"]), default=None)
        cells = [f"{fmt(lowest)} ≥ {workflow_r_target(key)}: {met(lowest, workflow_r_target(key))}"]
        for name in JUDGED_PROPERTIES:
            r = judged[name]["pearson_r"]
            cells.append(f"{fmt(r)}: {met(r, JUDGE_R_TARGET[name])}")
        for field, target in SHARE_TARGETS.items():
            cells.append(f"{share(judged.get(field))}: {met(judged.get(field), target)}")
        rows.append(f"| {title} | " + " | ".join(cells) + " |")
    return rows


def real_results_markdown(run: dict) -> str:
    control, check = run["control.json"], run["properties_judge_check.json"]
    first = next(iter(control.values()))
    lines = ["# Results on real faces", "", "*Written by `make docs-real` from `docs/run_real/`; do not edit.*", ""]
    lines += [stamp(run), "", "## Stages", ""] + real_stages_table(run) + [""]
    lines += ["Each property's valid share and the shares at its range's ends, over the kept faces:", ""]
    lines += range_table(check) + [""]
    lines += [
        "## Control",
        "",
        f"Each property swept over {first['levels']} requested levels between the female subset's 5th and 95th "
        f"percentiles (column *sweep*) for {first['num_z']} random z, the other properties drawn from the data. "
        "r, MAE, spread across z and within ±0.1: by the workflow's own measurement (the genuine BiSeNet and the "
        "property definitions); judges' r: the request against dlib's reading of the drawn face (eye and inner-lip "
        "aspect ratios, a perspective-n-point yaw, the top corners' luma), models used nowhere else. Same person: "
        "faces whose dlib descriptor lies within 0.6 of their sweep's first face.",
        "",
        "Against the targets (the lowest of the seven workflow r; targets r ≥ 0.95 with a loop, ≥ 0.90 in one "
        "pass; judges' r ≥ 0.85 for eyes and mouth, ≥ 0.90 for pose; ≥ 95 % the same person; ≥ 95 % female; "
        "a face found in ≥ 99 %):",
        "",
    ]
    lines += targets_table(control) + [""]
    for key, title in VARIANTS.items():
        if key not in control:
            continue
        variant = control[key]
        cost = ", ".join(f"{v} {COST_WORDS[k][v != 1]}" for k, v in variant["cost_per_face"].items() if v)
        lines += [f"### {title}", "", f"Per face: {cost}.", ""] + real_control_table(variant) + [""]
        lines += [real_variant_summary(variant), ""]
    caption = (
        "Rows: faces (z); columns: one property requested from its sweep's low to its high end. The fine-tuned "
        "generator as saved, then the directions baseline: `face_pose`, `eyes`, `mouth`."
    )
    return "\n".join(lines + sweeps_and_times(caption, "run_real", REAL_RUN_PICTURES, run["stage_times.json"]))


def real_headline_markdown(run: dict) -> str:
    control = run["control.json"]
    lines = [
        "| variant (MobileStyleGAN-FFHQ) | workflow's r, 7 properties | judges' r eyes / mouth / pose | same person "
        "| female | face found |",
        "|---|---|---|---|---|---|",
    ]
    for key in README_REAL_VARIANTS:
        if key not in control:
            continue
        v, judged, title = control[key], control[key]["judges"], VARIANTS[key]
        judges_r = " / ".join(fmt(judged[n]["pearson_r"], 2) for n in JUDGED_PROPERTIES)
        lines.append(
            f"| {title} | {r_range(v['parser'])} | {judges_r} | {share(judged['same_person_share'])} | "
            f"{share(judged.get('female_rate_stand_in'))} | {share(judged['faces_found'])} |"
        )
    lines += [
        "",
        f"{stamp(run)} Targets, the properties against the judges, the sweeps: "
        "[docs/results_real.md](docs/results_real.md).",
    ]
    return "\n".join(lines)


def small_jpeg(source: Path, dest: Path, scale: float = 0.5) -> None:
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: run the whole DAG first")
    with Image.open(source) as image:
        small = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    with atomic_path(dest) as tmp:
        small.save(tmp, format="JPEG", quality=88)


def main(argv=None) -> None:
    args = arguments(
        "python -m vhuman.results_real", __doc__.splitlines()[0], "docs/run_real", "docs/results_real.md", argv
    )
    if args.results and not args.check:
        collect(Path(args.results), Path(args.run), REAL_RUN_FILES)
        for name, rel in REAL_RUN_PICTURES.items():
            small_jpeg(Path(args.results) / rel, Path(args.run) / name)
    run = load_run(Path(args.run), REAL_RUN_FILES)
    readme = with_headline(Path(args.readme).read_text(), real_headline_markdown(run), REAL_BEGIN, REAL_END)
    write_or_check({Path(args.results_md): real_results_markdown(run), Path(args.readme): readme}, args, "docs-real")


if __name__ == "__main__":
    main()
