import os

from vhuman.report import animation_page_html, control_table_html, metrics_table_html, stage_times
from vhuman.results_doc import stamp


def test_metrics_table_flattens_nested_values_and_draws_record_lists():
    data = {"n": 7, "gender": {"auroc": 0.98765, "confusion": {"tp": 4}}, "history": [{"epoch": i} for i in range(5)]}
    page = metrics_table_html(data, "gender metrics", max_records=3)
    assert "<td>gender.auroc</td><td>0.9877</td>" in page
    assert "<td>gender.confusion.tp</td><td>4</td>" in page
    assert "<th>epoch</th>" in page and "<td>2</td>" in page and "<td>3</td>" not in page
    assert "2 more rows" in page


def test_control_table_has_a_row_per_property_and_model():
    stats = {"pearson_r": 0.5, "mae": 0.1, "share_of_z_passing": 0.2, "unmeasured_attributes_movement": 0.0123}
    stats["perfect_controller"] = {"pearson_r": 0.953, "mae": 0.0721}
    cost = {"syntheses": 3, "critic_passes": 2, "latent_model_steps": 5}
    control = {
        "finetuned": {"female_rate": 0.9, "cost_per_face": cost, "truth": {"eyes": stats, "mouth": stats}},
        "directions": {},
    }
    page = control_table_html(control)
    assert page.count("<td>eyes</td>") == 1 and page.count("<td>mouth</td>") == 1
    assert "cost per drawn face: syntheses 3, critic passes 2, latent model steps 5" in page
    assert "<td>syntheses</td>" not in page  # the cost is a line, not a measurement table
    assert "female_rate 0.9" in page and "<h2>directions</h2>" in page
    assert "<th>unmeasured_attributes_movement</th>" in page and page.count("<td>0.0123</td>") == 2
    assert page.count("<td>pearson_r 0.953, mae 0.0721</td>") == 2


def test_control_table_shows_the_judges_figures_beside_their_properties():
    judges = {"faces": 10, "faces_found": 0.9, "same_person_share": None, "eyes": {"pearson_r": 0.8, "judged": 9}}
    page = control_table_html({"finetuned": {"images": 10, "judges": judges}})
    assert "measured by: judges (faces 10, faces_found 0.9, same_person_share" in page
    assert "<td>eyes</td><td>0.8</td><td>9</td>" in page and "<th>mae</th>" not in page


def test_animation_page_embeds_the_gif(tmp_path):
    gif = tmp_path / "a.gif"
    gif.write_bytes(b"GIF89a-not-really")
    page = animation_page_html(gif, "blink <eyes>")
    assert "data:image/gif;base64,R0lGODlhLW5vdC1yZWFsbHk=" in page and "blink &lt;eyes&gt;" in page


def _benchmark(path, seconds, ended):
    path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:00\t100.0\n")
    os.utime(path, (ended, ended))
    return path


def test_stage_times_span_the_first_rule_s_start_to_the_last_one_s_end(tmp_path):
    files = {
        "generate_shard/0": _benchmark(tmp_path / "g0.tsv", 100, 1_000_100),
        "generate_shard/1": _benchmark(tmp_path / "g1.tsv", 50, 1_000_150),
        "finetune": _benchmark(tmp_path / "f.tsv", 200, 1_000_400),
    }
    times = stage_times(files, "float32", {"commit": "abc", "configfiles": []})
    assert times["total_seconds"] == 350
    span = {"first_start": "1970-01-12T13:46:40Z", "last_end": "1970-01-12T13:53:20Z", "wall_seconds": 400}
    assert times["span"] == span
    assert [r["rule"] for r in times["rules"]] == ["finetune", "generate_shard"]
    text = stamp({"stage_times.json": times})
    assert "5.8 minutes summed over its rules, 6.7 minutes from its first rule's start" in text


def test_a_resumed_run_s_span_shows_the_gap(tmp_path):
    # the early stage kept from a day before: the span, not the rules' sum, says the run was not made in one go
    files = {
        "generate": _benchmark(tmp_path / "g.tsv", 60, 1_000_000),
        "finetune": _benchmark(tmp_path / "f.tsv", 60, 1_086_400),
    }
    times = stage_times(files)
    assert times["total_seconds"] == 120 and times["span"]["wall_seconds"] == 86_460
    assert "from clean" not in stamp({"stage_times.json": {**times, "run": {}}})
