"""Latent directions: the fitted linear model, its per-layer edit, the layer search and the closed loop."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from vhuman.directions import (
    ClosedLoop,
    DirectionsController,
    fit_directions,
    load_directions,
)
from vhuman.generate import latents_table
from vhuman.generators import SYNTHETIC_LAYER_OF
from vhuman.io import vectors_column
from vhuman.latents import truncate
from vhuman.layer_probe import direction_layers
from vhuman.pictures import draw_conditions
from vhuman.regressor import PropertyRegressor
from vhuman.synthetic import PARAM_INDEX
from vhuman.vocabulary import PROPERTY_NAMES

# A layer mask for the eight direction rows that leaves layer 5 to no row.
SOME_LAYERS = torch.zeros(8, 6)
for _row, _layer in enumerate([2, 4, 1, 3, 0, 0, 0, 0]):
    SOME_LAYERS[_row, _layer] = 1


def test_directions_baseline_reaches_linear_targets(base, world):
    table, w, _ = world
    latents = pa.table({"image_id": list(table["image_id"]), "w": vectors_column(w.numpy())})
    fit = fit_directions(latents, table)
    weights, bias = fit["weights"], fit["bias"]
    ctrl = DirectionsController(base, weights, bias)
    z = torch.randn(6, 512)
    c = draw_conditions({"eyes": 0.9}, table[list(PROPERTY_NAMES)].to_numpy(np.float32), 6, seed=0)
    with torch.no_grad():
        w2 = ctrl.mapping(z, c)[:, 0]
    linear = w2.double() @ weights.t() + bias
    assert torch.allclose(linear.float(), c, atol=1e-3)


class LinearCritic(torch.nn.Module):
    """Reads each row as an exact linear function of the codes of its own layers (their mean), and p(female) as
    another: what the closed loop's step assumes, so its steps must land on the requested values."""

    width, input_size = 8, 64

    def __init__(self, weights, bias, layer_mask):
        super().__init__()
        self.weights, self.bias = weights.float(), bias.float()
        self.share = layer_mask / layer_mask.sum(1, keepdim=True)

    def forward(self, wp):
        reading = torch.einsum("rl,nlw,rw->nr", self.share, wp, self.weights) + self.bias
        return reading[:, :7], torch.logit(reading[:, 7].clamp(1e-4, 1 - 1e-4))


@pytest.mark.parametrize("layers", ["all", "some"])
def test_closed_loop_lands_on_the_request_when_the_critic_is_linear(base, directions, layers):
    weights, bias = directions["weights"].float(), directions["bias"].float()
    mask = torch.ones(8, 6) if layers == "all" else SOME_LAYERS
    critic = LinearCritic(weights, bias, mask)
    fixed = torch.tensor([0.9])  # inside (0, 1), where the female reading is exact
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(5, 512, generator=g), torch.rand(5, 7, generator=g)
    wp0 = base.mapping(z).unsqueeze(1).repeat(1, 6, 1)

    def draw(wp):  # the "image" of wp is wp itself, so that the critic can read it linearly
        return wp

    # A start whose female reading lies outside (0, 1) is clamped by the critic and only moves by the clamped gap
    # per step; once inside, one step lands exactly. 50 steps cover any start of these codes.
    loop = ClosedLoop(critic, weights, fixed, steps=50, layer_mask=mask)
    wp = loop(wp0, c, draw)
    read, female_logit = critic(wp)
    assert torch.allclose(read, c, atol=1e-3)
    assert torch.allclose(torch.sigmoid(female_logit), fixed.expand(5), atol=1e-3)
    assert not torch.allclose(critic(wp0)[0], c, atol=0.1)  # it had somewhere to go
    if layers == "some":  # a layer no row acts through stays as it was
        unused = mask.sum(0) == 0
        assert torch.equal(wp[:, unused], wp0[:, unused])
    assert torch.equal(ClosedLoop(critic, weights, fixed, steps=0, layer_mask=mask)(wp0, c, draw), wp0)
    with pytest.raises(ValueError, match="direction rows"):
        ClosedLoop(critic, weights[:5], fixed, steps=1, layer_mask=mask[:5])


def test_a_measured_loop_reads_the_properties_off_the_measurement_and_p_female_off_the_critic(base, directions):
    weights, bias = directions["weights"].float(), directions["bias"].float()
    exact = LinearCritic(weights, bias, SOME_LAYERS)
    offset = torch.cat([torch.full((7,), 0.2), torch.zeros(1)])
    biased = LinearCritic(weights, bias + offset, SOME_LAYERS)  # reads every property 0.2 too high
    fixed = torch.tensor([0.9])
    g = torch.Generator().manual_seed(1)
    z, c = torch.randn(4, 512, generator=g), 0.2 + 0.6 * torch.rand(4, 7, generator=g)
    wp0 = base.mapping(z).unsqueeze(1).repeat(1, 6, 1)
    loop = ClosedLoop(biased, weights, fixed, steps=50, layer_mask=SOME_LAYERS)
    off = exact(loop(wp0, c, lambda wp: wp))[0]
    assert torch.allclose(off, c - 0.2, atol=1e-3)  # the critic's loop inherits the critic's error
    mouth = PROPERTY_NAMES.index("mouth")

    def measure(wp):  # the exact reading, with the mouth missing on every face
        values = exact(wp)[0].clone()
        values[:, mouth] = float("nan")
        return values

    loop.measure = measure
    read, female_logit = exact(loop(wp0, c, lambda wp: wp))
    others = [k for k in range(7) if k != mouth]
    assert torch.allclose(read[:, others], c[:, others], atol=1e-3)
    assert torch.allclose(read[:, mouth], c[:, mouth] - 0.2, atol=1e-3)  # no measurement: the critic's value
    assert torch.allclose(torch.sigmoid(female_logit), fixed.expand(4), atol=1e-3)


def test_directions_controller_with_a_closed_loop_of_zero_steps_is_the_open_baseline(base, directions):
    weights, bias, fixed = directions["weights"], directions["bias"], directions["fixed_targets"]
    loop = ClosedLoop(PropertyRegressor(width=8), weights, fixed, steps=0, num_layers=6)
    plain = DirectionsController(base, weights, bias, fixed)
    looped = DirectionsController(base, weights, bias, fixed, closed_loop=loop)
    z, c = torch.randn(3, 512), torch.rand(3, 7)
    with torch.no_grad():
        assert torch.equal(plain(z, c), looped(z, c))
        loop.steps = 1
        assert not torch.equal(plain(z, c), looped(z, c))


def test_with_closed_loop_refines_the_same_baseline_and_leaves_it_open(base, directions):
    weights, bias, fixed = directions["weights"], directions["bias"], directions["fixed_targets"]
    plain = DirectionsController(base, weights, bias, fixed)
    loop = ClosedLoop(PropertyRegressor(width=8), weights, fixed, steps=1, num_layers=6)
    looped = plain.with_closed_loop(loop)
    z, c = torch.randn(3, 512), torch.rand(3, 7)
    with torch.no_grad():
        assert looped.closed_loop is loop and plain.closed_loop is None
        assert looped.weights.data_ptr() == plain.weights.data_ptr()  # shared, not copied
        assert torch.equal(looped.mapping(z, c), plain.mapping(z, c))
        assert not torch.equal(looped(z, c), plain(z, c))


def test_direction_layers_find_the_layer_each_property_lives_on(base, directions):
    weights = directions["weights"].float()
    columns = [PARAM_INDEX[n] for n in (*PROPERTY_NAMES, "gender")]

    def read_truth(wp):  # the exact properties and p(female) of the drawn faces
        return base.render_params(truncate(wp, base.w_avg, base.num_layers))[:, columns]

    codes = base.mapping(torch.randn(32, 512, generator=torch.Generator().manual_seed(0)))  # not the test order's
    mask, effect = direction_layers(read_truth, codes, weights, base.num_layers)
    home = {name: layer for layer, names in SYNTHETIC_LAYER_OF.items() for name in names}
    expected = torch.zeros(8, 6)
    for row, name in enumerate((*PROPERTY_NAMES, "gender")):
        expected[row, home[name]] = 1
    expected[PROPERTY_NAMES.index("hair_length"), home["gender"]] = 1  # in this world, women's hair is longer
    assert torch.equal(mask, expected), effect
    # The baseline with that mask: asking for other eyes moves only the eyes' layer.
    ctrl = DirectionsController(base, weights, directions["bias"], directions["fixed_targets"], layer_mask=mask)
    z, c = torch.randn(4, 512), torch.rand(4, 7)
    other = c.clone()
    other[:, 0] = 1 - c[:, 0]
    with torch.no_grad():
        moved = (ctrl.mapping(z, other) - ctrl.mapping(z, c)).abs().amax(dim=(0, 2))
    assert moved[home["eyes"]] > 0.1 and torch.all(moved[torch.arange(6) != home["eyes"]] < 1e-5)


def test_a_direction_the_data_could_not_fit_stays_still_and_the_others_still_land(base, world):
    """A property that is constant on the data has a zero direction; the edit must not fail on the singular Gram
    matrix, must leave that reading alone, and must still set the other properties."""
    table, w, _ = world
    flat = table.copy()
    flat["mouth"] = 0.3  # constant: its ridge line has zero weights
    latents = pa.table({"image_id": list(flat["image_id"]), "w": vectors_column(w.numpy())})
    fit = fit_directions(latents, flat)
    mouth = PROPERTY_NAMES.index("mouth")
    assert fit["weights"][mouth].abs().max() < 1e-20
    with pytest.warns(UserWarning, match=f"rows \\[{mouth}\\] cannot be set"):
        ctrl = DirectionsController(base, fit["weights"], fit["bias"])
    z = torch.randn(4, 512, generator=torch.Generator().manual_seed(1))
    c = torch.rand(4, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        w2 = ctrl.mapping(z, c)[:, 0]
    linear = (w2.double() @ fit["weights"].t() + fit["bias"]).float()
    others = [k for k in range(7) if k != mouth]
    assert torch.allclose(linear[:, others], c[:, others], atol=1e-3)
    assert torch.all(torch.isfinite(w2))


def test_a_probe_by_groups_gives_each_layer_its_group_s_effect_and_skips_unprobed_rows():
    from vhuman.layer_probe import direction_layers

    weights = torch.eye(3, 4)  # three rows, each reading one coordinate of w

    def read(wp):  # row 0 is seen through layers 2 and 3 only; rows 1 and 2 through layer 0
        return torch.stack([wp[:, 2:, 0].sum(1), wp[:, 0, 1], wp[:, 0, 2]], 1)

    w = torch.zeros(5, 4)
    mask, effect = direction_layers(read, w, weights, 4, groups=[[0, 1], [2, 3]], probed_rows=2)
    assert effect[0].tolist() == pytest.approx([0, 0, 2, 2])  # a move on both layers of group [2, 3]
    assert effect[1].tolist() == pytest.approx([1, 1, 0, 0])
    assert effect[2].abs().sum() == 0 and mask[2].tolist() == [1, 1, 1, 1]  # not probed: every layer
    assert mask[0].tolist() == [0, 0, 1, 1]


def test_the_directions_record_how_the_data_was_drawn_and_the_baseline_draws_so(base, world, tmp_path):
    table, w, _ = world
    latents = latents_table(list(table["image_id"]), range(len(table)), np.zeros((len(table), 512)), w.numpy(), 0.5, 2)
    fitted = fit_directions(latents, table)
    assert fitted["truncation"] == {"psi": 0.5, "layers": 2}
    assert fit_directions(latents.replace_schema_metadata(None), table)["truncation"] == {"psi": 1.0, "layers": None}
    torch.save(fitted, tmp_path / "directions.pth")
    baseline = load_directions(tmp_path / "directions.pth", base)
    loop = ClosedLoop(PropertyRegressor(width=8), fitted["weights"], fitted["fixed_targets"], steps=1, num_layers=6)
    z, c = torch.randn(3, 512), torch.rand(3, 7)
    with torch.no_grad():
        codes = baseline.mapping(z, c)
        assert torch.equal(baseline.wp(z, c), truncate(codes, base.w_avg, base.num_layers, 0.5, 2))
        assert torch.equal(baseline.wp(z, c, psi=1.0), codes)
        assert baseline.with_closed_loop(loop).truncation == baseline.truncation
