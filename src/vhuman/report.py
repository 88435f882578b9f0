"""Pictures for the Snakemake report."""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vhuman.io import load_image, load_label_map, save_png
from vhuman.vocabulary import LABEL_PALETTE, PROPERTY_NAMES


def image_grid(images: list[np.ndarray], rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """Tile equally sized [H, W, 3] uint8 images row by row on a white canvas."""
    if not images:
        raise ValueError("no images to put in a grid")
    h, w = images[0].shape[:2]
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for k, img in enumerate(images[: rows * cols]):
        r, c = divmod(k, cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return canvas


def image_grid_from_dir(images_dir: str | Path, out_path: str | Path, rows: int, cols: int) -> None:
    """Grid of the first rows x cols PNGs of a folder, in image_id order."""
    paths = sorted(Path(images_dir).glob("*.png"))[: rows * cols]
    save_png(image_grid([load_image(p) for p in paths], rows, cols), out_path)


def mask_overlay_grid(
    images_dir: str | Path, masks_dir: str | Path, image_ids: list[str], out_path: str | Path, alpha: float = 0.55
) -> None:
    """Images (top row) and their masks blended over them (bottom row), at the mask size."""

    tops, bottoms = [], []
    for i in image_ids:
        mask = load_label_map(Path(masks_dir) / f"{i}.png")
        size = mask.shape[::-1]
        img = np.asarray(Image.fromarray(load_image(Path(images_dir) / f"{i}.png")).resize(size, Image.NEAREST))
        tops.append(img)
        bottoms.append((img * (1 - alpha) + LABEL_PALETTE[mask] * alpha).astype(np.uint8))
    save_png(image_grid(tops + bottoms, 2, len(image_ids)), out_path)


def _text(draw, xy, text, fill=(0, 0, 0)):
    draw.text(xy, text, fill=fill)


def property_histograms(table, out_path: str | Path, bins: int = 20) -> None:
    """One histogram per property and the properties' correlation matrix, drawn with PIL (no plotting stack)."""

    cell_w, cell_h, pad = 220, 150, 24
    n = len(PROPERTY_NAMES)
    corr_size = 40 * n + 140
    canvas = Image.new("RGB", (4 * cell_w, 2 * cell_h + corr_size + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(PROPERTY_NAMES):
        x0, y0 = (k % 4) * cell_w, (k // 4) * cell_h
        values = table.loc[table[f"{name}_valid"].astype(bool), name].to_numpy()
        lo = -1.0 if name == "face_pose" else 0.0
        counts, _ = np.histogram(values, bins=bins, range=(lo, 1.0))
        top = max(counts.max(), 1)
        bar_w = (cell_w - 2 * pad) / bins
        for b, c in enumerate(counts):
            h = (cell_h - 2 * pad) * c / top
            draw.rectangle(
                [x0 + pad + b * bar_w, y0 + cell_h - pad - h, x0 + pad + (b + 1) * bar_w - 1, y0 + cell_h - pad],
                fill=(70, 110, 180),
            )
        _text(draw, (x0 + pad, y0 + 4), f"{name} (n={len(values)})")
        _text(draw, (x0 + pad, y0 + cell_h - pad + 4), f"{lo:g}")
        _text(draw, (x0 + cell_w - pad - 8, y0 + cell_h - pad + 4), "1")
    corr = table[list(PROPERTY_NAMES)].corr().to_numpy()
    y0, x0 = 2 * cell_h + pad, 130
    _text(draw, (pad, y0 - 18), "correlation between properties (blue -1 ... red +1)")
    for i, name in enumerate(PROPERTY_NAMES):
        _text(draw, (pad, y0 + 40 * i + 14), name[:16])
        _text(draw, (x0 + 40 * i + 2, y0 + 40 * n + 4), name[:6])
        for j in range(n):
            r = 0.0 if np.isnan(corr[i, j]) else corr[i, j]
            colour = (
                (255, int(255 * (1 - r)), int(255 * (1 - r)))
                if r >= 0
                else (int(255 * (1 + r)), int(255 * (1 + r)), 255)
            )
            draw.rectangle([x0 + 40 * j, y0 + 40 * i, x0 + 40 * j + 38, y0 + 40 * i + 38], fill=colour)
            _text(draw, (x0 + 40 * j + 6, y0 + 40 * i + 14), f"{r:+.2f}")
    save_png(np.asarray(canvas), out_path)


# --- Tables: the metric JSON files shown as HTML in the report (a JSON file would only be a download there). ---

_TABLE_STYLE = (
    "<style>body{font-family:sans-serif;font-size:13px;margin:8px}table{border-collapse:collapse;margin:6px 0 14px}"
    "th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}td:first-child,"
    "th:first-child{text-align:left}h2{font-size:15px;margin:10px 0 2px}</style>"
)


def _page(body: str) -> str:
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'>{_TABLE_STYLE}</head><body>{body}</body></html>"


def _cell(value) -> str:
    if value is None:
        return "–"  # undefined (written as null), e.g. r over too few valid faces
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):  # a small record in one cell, e.g. what a perfect controller would score
        return ", ".join(f"{escape(str(k))} {_cell(v)}" for k, v in value.items())
    return escape(str(value))


def _rows_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _flatten(data: dict, prefix: str = "") -> tuple[list[list], dict[str, list]]:
    """Scalars as (dotted key, value) rows; lists of records kept apart to be drawn as their own tables."""
    scalars, record_lists = [], {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            sub_scalars, sub_lists = _flatten(value, f"{name}.")
            scalars += sub_scalars
            record_lists.update(sub_lists)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            record_lists[name] = value
        else:
            scalars.append([name, value])
    return scalars, record_lists


def metrics_table_html(data: dict, title: str, max_records: int = 60) -> str:
    """A metrics dict as an HTML page: one key/value table, then each list of records as a table of its own."""

    scalars, record_lists = _flatten(data)
    parts = [f"<h2>{escape(title)}</h2>", _rows_table(["metric", "value"], scalars)]
    for name, records in record_lists.items():
        header = list(dict.fromkeys(k for record in records for k in record))
        shown = records[:max_records]
        parts.append(f"<h2>{escape(name)}</h2>")
        parts.append(_rows_table(header, [[record.get(k, "") for k in header] for record in shown]))
        if len(records) > len(shown):
            parts.append(f"<p>... {len(records) - len(shown)} more rows in the JSON file.</p>")
    return _page("".join(parts))


def control_table_html(control: dict) -> str:
    """control.json as one table per model and measurement: a row per property, a column per metric."""

    columns = ["pearson_r", "mae", "spread_across_z", "share_within_0.1", "share_of_z_passing", "cutoff"]
    columns += ["other_properties_movement", "valid_share"]
    parts = []
    for model, result in control.items():
        summary = ", ".join(f"{k} {_cell(v)}" for k, v in result.items() if not isinstance(v, dict))
        cost = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.get("cost_per_face", {}).items())
        parts.append(f"<h2>{escape(model)}</h2><p>{summary}</p><p>cost per drawn face: {cost or 'not recorded'}</p>")
        for measured_by, per_property in result.items():
            if not isinstance(per_property, dict) or measured_by == "cost_per_face":
                continue
            # A measurement's own figures (the judges' faces found, identity) head its table of properties.
            props = {prop: stats for prop, stats in per_property.items() if isinstance(stats, dict)}
            own = ", ".join(f"{k} {_cell(v)}" for k, v in per_property.items() if not isinstance(v, dict))
            # Metrics only some measurements have (the truth's unmeasured attributes) go after the common ones.
            present = {k for stats in props.values() for k in stats}
            shown = [c for c in columns if c in present] + sorted(present - set(columns))
            rows = [[prop] + [stats.get(c, "") for c in shown] for prop, stats in props.items()]
            head = f"<p>measured by: {escape(measured_by)}" + (f" ({escape(own)})" if own else "") + "</p>"
            parts.append(head + _rows_table(["property", *shown], rows))
    return _page("".join(parts))


def animation_page_html(gif_path: str | Path, title: str) -> str:
    """A GIF inside an HTML page: the report's viewer shows HTML and PNG/JPEG/SVG, but not GIF files."""
    import base64

    data = base64.b64encode(Path(gif_path).read_bytes()).decode("ascii")
    return _page(
        f"<h2>{escape(title)}</h2><img alt='{escape(title)}' style='image-rendering:pixelated;width:256px' "
        f"src='data:image/gif;base64,{data}'>"
    )


def machine_description() -> dict:
    """What the stage times were measured on: CPU model, cores, GPU."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores}


def run_origin(workflow_dir: str | Path, configfiles: list[str]) -> dict:
    """The commit the workflow's code is at (with ``+changes`` when tracked files differ from it; ``unknown``
    outside a git checkout) and the config files the run was given, to stamp the run's figures with."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(workflow_dir), *args], capture_output=True, text=True, check=True)

    try:
        commit = git("rev-parse", "--short=12", "HEAD").stdout.strip()
        if git("status", "--porcelain", "--untracked-files=no").stdout.strip():
            commit += "+changes"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    here = Path.cwd().resolve()
    named = [Path(c).resolve() for c in configfiles]
    return {
        "commit": commit,
        "configfiles": [str(c.relative_to(here)) if c.is_relative_to(here) else str(c) for c in named],
    }


def joined_shards(rows: list[dict]) -> list[dict]:
    """One row per sharded rule (``rule/shard`` rows): seconds summed, the largest peak memory, the number of jobs."""
    out, sharded = [], {}
    for row in rows:
        name, _, shard = row["rule"].partition("/")
        if not shard:
            out.append(row)
            continue
        joined = sharded.setdefault(name, {"rule": name, "seconds": 0.0, "max_rss_mb": None, "jobs": 0})
        joined["seconds"] = round(joined["seconds"] + (row["seconds"] or 0), 2)
        joined["max_rss_mb"] = max(joined["max_rss_mb"] or 0, row["max_rss_mb"] or 0) or None
        joined["jobs"] += 1
    return out + list(sharded.values())


def stage_times(
    benchmark_files: dict[str, str | Path], precision: str | None = None, origin: dict | None = None
) -> dict:
    """Snakemake's benchmark files (one per rule) as one table: wall seconds and peak memory per rule, and the sum
    (the DAG's total when its rules run one after another); ``precision`` is what the network stages computed in,
    ``origin`` the commit and config files the run was started from."""
    rows, spans = [], []
    for rule, path in benchmark_files.items():
        lines = Path(path).read_text().splitlines()
        header, values = lines[0].split("\t"), lines[-1].split("\t")
        record = dict(zip(header, values, strict=True))

        def number(key, record=record):
            try:
                return round(float(record[key]), 2)
            except (KeyError, ValueError):
                return None  # Snakemake writes NA where it could not measure

        rows.append({"rule": rule, "seconds": number("s"), "max_rss_mb": number("max_rss")})
        # Snakemake writes a rule's benchmark file when the rule ends: its time less the rule's seconds is the start.
        ended = Path(path).stat().st_mtime
        spans.append((ended - (rows[-1]["seconds"] or 0), ended))
    rows = joined_shards(rows)
    rows.sort(key=lambda r: -(r["seconds"] or 0))
    total = sum(r["seconds"] or 0 for r in rows)
    machine = {**machine_description(), **({"precision": precision} if precision else {})}
    return {
        "machine": machine,
        **({"run": origin} if origin else {}),
        "total_seconds": round(total, 1),
        **({"span": run_span(spans)} if spans else {}),
        "rules": rows,
    }


def run_span(spans: list[tuple[float, float]]) -> dict:
    """From the first rule's start to the last one's end: the run's wall time when it ran in one go; a run that was
    stopped and resumed, or whose early stages were kept from an older run, shows it as a span far longer than its
    rules' seconds."""
    from datetime import UTC, datetime

    first, last = min(s for s, _ in spans), max(e for _, e in spans)

    def iso(t):
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {"first_start": iso(first), "last_end": iso(last), "wall_seconds": round(last - first, 1)}
