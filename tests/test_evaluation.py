"""Evaluation of control: metrics on perfect and useless controllers, and the sweep with the exact truth."""

import numpy as np
import pytest
import torch

from vhuman.conditional import ConditionalGenerator, ConditionalMapping
from vhuman.directions import DirectionsController
from vhuman.evaluation import control_metrics, evaluate
from vhuman.vocabulary import PROPERTY_NAMES


def test_control_metrics_on_perfect_and_useless_controllers():
    rng = np.random.default_rng(0)
    n_z, levels = 10, 5
    requested, z_index, swept = [], [], []
    for k in range(7):
        for zi in range(n_z):
            for level in np.linspace(0, 1, levels):
                c = rng.random(7)
                c[k] = level
                requested.append(c)
                z_index.append(zi)
                swept.append(k)
    requested, z_index, swept = np.array(requested), np.array(z_index), np.array(swept)
    perfect = control_metrics(requested, requested, swept, z_index)
    assert all(perfect[n]["pearson_r"] > 0.999 and perfect[n]["share_of_z_passing"] == 1 for n in PROPERTY_NAMES)
    useless = control_metrics(requested, rng.random(requested.shape), swept, z_index)
    assert all(abs(useless[n]["pearson_r"]) < 0.3 for n in PROPERTY_NAMES)


def test_evaluate_with_truth_runs(base, world, directions):
    table = world[0]
    mapping = ConditionalMapping(base, 7, torch.zeros(7), torch.ones(7))
    model = ConditionalGenerator(base, mapping)
    rows = table[list(PROPERTY_NAMES)].to_numpy(np.float32)
    result = evaluate(model, rows, num_z=3, levels=3, seed=0, with_truth=True, progress=False)
    assert result["images"] == 7 * 3 * 3
    # The untrained model ignores its conditions: the requested values do not come out, and nothing moves.
    assert result["truth"]["eyes"]["share_of_z_passing"] < 0.5
    assert all(result["truth"][n]["unmeasured_attributes_movement"] < 1e-6 for n in PROPERTY_NAMES)
    assert 0 < result["female_rate_truth"] < 1  # the base draws both genders
    # An edit in w reaches the world's unmeasured attributes too (skin tone, hues, ...), and the metric sees it.
    ctrl = DirectionsController(base, directions["weights"], directions["bias"], directions["fixed_targets"])
    moved = evaluate(ctrl, rows, num_z=3, levels=3, seed=0, with_truth=True, progress=False)["truth"]
    assert all(moved[n]["unmeasured_attributes_movement"] > 0.005 for n in PROPERTY_NAMES)


def test_evaluate_hands_every_drawn_face_to_the_judges(base, world):
    from vhuman.judges import Verdict

    seen = []

    def judge(images):  # a stand-in judge: a face everywhere, eyes read as the image's mean brightness
        seen.append(len(images))
        return [Verdict(True, float(im.mean()), 0.1, 0.0, 0.5, np.zeros(128)) for im in images]

    rows = world[0][list(PROPERTY_NAMES)].to_numpy(np.float32)
    model = ConditionalGenerator(base, ConditionalMapping(base, 7, torch.zeros(7), torch.ones(7)))
    result = evaluate(model, rows, num_z=2, levels=3, seed=0, progress=False, judge_images=judge)
    assert sum(seen) == result["images"] == 7 * 2 * 3
    assert result["judges"]["faces_found"] == 1.0 and result["judges"]["same_person_share"] == 1.0
    assert result["judges"]["eyes"]["judged"] == 2 * 3


def test_control_metrics_give_the_spread_across_z_and_the_share_within_a_tenth():
    from vhuman.evaluation import control_metrics

    levels = np.array([0.0, 0.5, 1.0])
    k = PROPERTY_NAMES.index("eyes")
    requested = np.zeros((12, len(PROPERTY_NAMES)))
    requested[:, k] = np.tile(levels, 4)
    measured = requested.copy()
    # four faces per level: two land exactly, two land 0.2 off in opposite directions
    measured[:, k] += np.repeat([0.0, 0.0, 0.2, -0.2], 3)
    swept = np.full(12, k)
    z_index = np.repeat(np.arange(4), 3)
    eyes = control_metrics(requested, measured, swept, z_index)["eyes"]
    assert eyes["share_within_0.1"] == pytest.approx(0.5)
    assert eyes["spread_across_z"] == pytest.approx(np.std([0.0, 0.0, 0.2, -0.2]))


def test_reachable_requests_are_what_the_world_draws():
    from vhuman.evaluation import reachable
    from vhuman.synthetic import PARAM_INDEX, sample_face_params

    drawn = sample_face_params(2000, seed=3)[:, [PARAM_INDEX[n] for n in PROPERTY_NAMES]].numpy()
    np.testing.assert_allclose(reachable(drawn), drawn, atol=1e-6)  # whatever the world drew, it can draw
    k = {name: i for i, name in enumerate(PROPERTY_NAMES)}
    request = np.full((2, len(PROPERTY_NAMES)), 0.5, np.float32)
    request[:, k["hair_color"]] = [0.0, 1.0]
    request[:, k["background_light"]] = 0.0
    request[:, k["background_std"]] = [0.0, 1.0]  # a plain and a busy backdrop, both asked to be black
    near = reachable(request)
    assert near[:, k["hair_color"]].tolist() == pytest.approx([0.05, 0.95])
    plain, busy = near[:, k["background_light"]]
    assert plain < 0.05 < 0.2 < busy  # a busy texture needs room: its backdrop cannot be black
    untouched = [i for i in range(len(PROPERTY_NAMES)) if i not in (k["hair_color"], k["background_light"])]
    np.testing.assert_array_equal(near[:, untouched], request[:, untouched])


def test_evaluate_reports_what_a_perfect_controller_would_score(base, world):
    rows = world[0][list(PROPERTY_NAMES)].to_numpy(np.float32)
    model = ConditionalGenerator(base, ConditionalMapping(base, 7, torch.zeros(7), torch.ones(7)))
    truth = evaluate(model, rows, num_z=4, levels=5, seed=0, with_truth=True, progress=False)["truth"]
    assert truth["eyes"]["perfect_controller"] == {"pearson_r": pytest.approx(1.0), "mae": 0.0, "share_within_0.1": 1.0}
    hair = truth["hair_color"]["perfect_controller"]
    assert hair["mae"] == pytest.approx(0.1 / 5)  # 0.05 off at both ends of five levels
    assert truth["background_light"]["perfect_controller"]["mae"] > 0.02  # texture keeps the ends out of reach


def test_the_evaluation_compares_the_file_with_and_without_its_loop_and_the_measured_loop(base, directions, tmp_path):
    from tests.test_workflow import VARIANTS
    from vhuman.conditional import save_conditional_generator
    from vhuman.directions import ClosedLoop
    from vhuman.evaluation import controllers_to_compare
    from vhuman.regressor import PropertyRegressor

    mapping = ConditionalMapping(base, 7, torch.zeros(7), torch.ones(7), directions)
    weights, fixed = directions["weights"], directions["fixed_targets"]
    loop = ClosedLoop(PropertyRegressor(width=4, input_size=32), weights, fixed, 2, num_layers=6)
    torch.save(directions, tmp_path / "directions.pth")
    for name, with_loop in (("plain.pth", None), ("looped.pth", loop)):
        save_conditional_generator(tmp_path / name, base, mapping, torch.nn.Linear(1, 1), with_loop, {}, {})
    cpu = torch.device("cpu")
    assert set(controllers_to_compare(tmp_path / "plain.pth", tmp_path / "directions.pth", cpu)) == {
        "finetuned",
        "directions",
    }

    def measure(images):
        return torch.zeros(len(images), 7)

    both = controllers_to_compare(tmp_path / "looped.pth", tmp_path / "directions.pth", cpu, measure)
    assert set(both) == VARIANTS
    assert both["finetuned"].closed_loop.measure is None and both["directions_closed_loop"].closed_loop.measure is None
    assert both["finetuned_measured_loop"].closed_loop.measure is measure
    assert both["directions_measured_loop"].closed_loop is both["finetuned_measured_loop"].closed_loop
    assert both["finetuned_open_loop"].closed_loop.steps == 0 and both["finetuned"].closed_loop.steps == 2
    without = controllers_to_compare(tmp_path / "looped.pth", tmp_path / "directions.pth", cpu)
    assert "finetuned_measured_loop" not in without and "directions_closed_loop" in without


def test_sweeps_run_between_the_data_s_percentiles_where_the_config_asks(base, world):
    import pandas as pd

    from vhuman.evaluation import sweep_bounds
    from vhuman.vocabulary import RANGES

    values = np.linspace(0.2, 0.6, 101)
    table = pd.DataFrame({n: values for n in PROPERTY_NAMES} | {f"{n}_valid": True for n in PROPERTY_NAMES})
    table.loc[:9, "mouth_valid"] = False  # invalid rows do not count
    table.loc[:9, "mouth"] = 5.0
    table["eyes_valid"] = False  # no valid value at all: the whole range
    bounds = sweep_bounds(table, [5, 95])
    assert bounds["hair_color"] == pytest.approx((0.22, 0.58))
    assert bounds["mouth"] == pytest.approx(tuple(np.percentile(values[10:], [5, 95])))
    assert bounds["eyes"] == RANGES["eyes"]
    assert sweep_bounds(table, None) == {n: RANGES[n] for n in PROPERTY_NAMES}

    model = ConditionalGenerator(base, ConditionalMapping(base, 7, torch.zeros(7), torch.ones(7)))
    asked, wp = [], model.wp
    model.wp = lambda z, c, *args: asked.append(c.clone()) or wp(z, c, *args)
    rows = world[0][list(PROPERTY_NAMES)].to_numpy(np.float32)
    result = evaluate(model, rows, num_z=2, levels=3, seed=0, progress=False, bounds=bounds)
    assert result["sweep_bounds"]["hair_color"] == pytest.approx([0.22, 0.58])
    requests = torch.cat(asked)  # the sweeps in order: 2 z x 3 levels per property
    k = PROPERTY_NAMES.index("hair_color")
    swept = requests[k * 6 : (k + 1) * 6, k]
    assert swept.min().item() == pytest.approx(0.22) and swept.max().item() == pytest.approx(0.58)


def test_the_female_rate_reads_every_kth_face_of_the_whole_sweep_across_batches(base, world):
    rows = world[0][list(PROPERTY_NAMES)].to_numpy(np.float32)
    model = ConditionalGenerator(base, ConditionalMapping(base, 7, torch.zeros(7), torch.ones(7)))
    brightness = []

    def female(images):  # "female" where the face is brighter than the middle: a value that differs per face
        brightness.append(images.flatten(1).mean(1))
        return (brightness[-1] > 0).numpy()

    every = evaluate(model, rows, num_z=2, levels=3, seed=0, progress=False, female_rate=female, batch=5)
    all_faces = torch.cat(brightness)
    brightness.clear()
    third = evaluate(
        model, rows, num_z=2, levels=3, female_rate=female, female_rate_every=3, seed=0, batch=5, progress=False
    )
    assert every["female_rate_faces"] == 42 and third["female_rate_faces"] == 14  # 7 properties x 2 z x 3 levels
    torch.testing.assert_close(torch.cat(brightness), all_faces[::3])  # batches of 5 do not shift the stride
    assert third["female_rate"] == pytest.approx(float((all_faces[::3] > 0).float().mean()))
    assert every["female_rate"] == pytest.approx(float((all_faces > 0).float().mean()))


def test_each_sweep_moves_only_its_property_and_keeps_one_z_and_one_draw_of_the_others():
    from vhuman.evaluation import sweep_requests

    rows = np.random.default_rng(1).uniform(0, 1, (50, len(PROPERTY_NAMES))).astype(np.float32)
    bounds = {n: (0.1 * i, 0.1 * i + 0.5) for i, n in enumerate(PROPERTY_NAMES)}
    z, requested, z_index, swept = sweep_requests(rows, num_z=3, levels=4, seed=7, bounds=bounds, z_dim=5)
    assert z.shape == (3, 5) and requested.shape == (len(PROPERTY_NAMES) * 12, len(PROPERTY_NAMES))
    for k, name in enumerate(PROPERTY_NAMES):
        for zi in range(3):
            faces = requested[(swept == k) & (z_index == zi)]
            np.testing.assert_allclose(faces[:, k], np.linspace(*bounds[name], 4), rtol=1e-6)
            others = np.delete(faces, k, axis=1)
            assert (others == others[0]).all()  # the other properties stay as drawn for this z
            base = np.delete(requested[(swept == 0) & (z_index == zi)][0], [0, k])
            np.testing.assert_array_equal(np.delete(faces[0], [0, k]), base)  # the same draw in every sweep
    again = sweep_requests(rows, num_z=3, levels=4, seed=7, bounds=bounds, z_dim=5)
    torch.testing.assert_close(again[0], z)
    np.testing.assert_array_equal(again[1], requested)
