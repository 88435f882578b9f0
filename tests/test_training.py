"""Fine-tune machinery on tiny settings: exact start, control improves, resume after a kill, controllers."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from vhuman.control import (
    DirectionsController,
    control_metrics,
    direction_layers,
    directions_layer_mask,
    draw_conditions,
    evaluate,
    fit_directions,
)
from vhuman.generators import SYNTHETIC_LAYER_OF, SyntheticGenerator, truncate
from vhuman.io import vectors_column
from vhuman.regressor import PropertyRegressor
from vhuman.synthetic import PARAM_INDEX, PROPERTY_NAMES
from vhuman.training import (
    ClosedLoop,
    ConditionalGenerator,
    ConditionalMapping,
    FinetuneSettings,
    finetune,
    load_conditional_generator,
)

# A layer mask for the eight direction rows that leaves layer 5 to no row.
SOME_LAYERS = torch.zeros(8, 6)
for _row, _layer in enumerate([2, 4, 1, 3, 0, 0, 0, 0]):
    SOME_LAYERS[_row, _layer] = 1


@pytest.fixture(scope="module")
def base():
    return SyntheticGenerator(64, seed=0)


@pytest.fixture(scope="module")
def world(base):
    """The truth of 400 generated faces stands in for a measured property table."""
    z = torch.randn(400, 512, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        w = base.mapping(z)
        params = base.render_params(truncate(w, base.w_avg, base.num_layers))
        images = base.synthesis(truncate(w, base.w_avg, base.num_layers))
    table = pd.DataFrame({"image_id": [f"{i:06d}" for i in range(400)]})
    for name in PROPERTY_NAMES:
        table[name] = params[:, PARAM_INDEX[name]].numpy()
        table[f"{name}_valid"] = True
    uint8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return table, w, uint8


@pytest.fixture(scope="module")
def directions(world):
    table, w, _ = world
    latents = pa.table({"image_id": list(table["image_id"]), "w": vectors_column(w.numpy())})
    labels = pd.DataFrame({"image_id": table["image_id"], "p_female": (np.arange(len(table)) % 3 > 0).astype(float)})
    return fit_directions(latents, table, labels)


@pytest.mark.parametrize("with_directions", [False, True])
def test_fine_tuned_model_starts_exactly_as_the_base(base, world, directions, with_directions):
    table = world[0]
    mapping = ConditionalMapping(
        base, len(PROPERTY_NAMES), torch.zeros(7), torch.ones(7), directions if with_directions else None
    )
    model = ConditionalGenerator(base, mapping)
    z = torch.randn(4, 512)
    c = torch.rand(4, 7)
    with torch.no_grad():
        assert torch.allclose(model.mapping(z, c), base.mapping(z).unsqueeze(1).expand(-1, 6, -1), atol=1e-5)
        if with_directions:
            # Gates open: the mapping makes the baseline's edit, properties and the female row on target.
            mapping.direction_gate.fill_(1.0)
            w = model.mapping(z, c)[:, 0]  # every layer alike: this file's directions have no layer mask
            linear = w.double() @ directions["weights"].t() + directions["bias"]
            assert torch.allclose(linear[:, :7].float(), c, atol=1e-3)
            assert torch.allclose(linear[:, 7].float(), torch.ones(4), atol=1e-3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("cond_mapping.") for n in trainable)  # synthesis frozen
    assert len(table) == 400


def test_finetune_learns_control_and_resumes(base, world, directions, tmp_path):
    table, _, images = world
    regressor = PropertyRegressor(width=8)  # untrained critic: enough to test the mechanics, not the quality
    settings = FinetuneSettings(steps=3, batch_size=8, checkpoint_every=3, log_every=3)
    record = {"base_sha256": "x"}

    def run(run_settings, out_name, run_directions=directions):
        finetune(
            base,
            None,
            regressor,
            table,
            images,
            run_settings,
            tmp_path / "work",
            tmp_path / out_name,
            record,
            torch.device("cpu"),
            progress=False,
            directions=run_directions,
        )

    run(settings, "ft.pth")
    log = pd.read_csv(tmp_path / "work" / "log.csv")
    assert list(log["step"]) == [3] and {"control", "d_loss", "r_eyes", "female_rate"} <= set(log.columns)
    model = load_conditional_generator(tmp_path / "ft.pth")
    z, c = torch.randn(2, 512), torch.rand(2, 7)
    with torch.no_grad():
        img = model(z, c)
    assert img.shape == (2, 3, 64, 64)
    # The file carries its closed loop: the critic it was trained against and the configured number of steps.
    assert model.closed_loop.steps == settings.closed_loop_steps == 2
    for key, value in regressor.state_dict().items():
        assert torch.equal(model.closed_loop.critic.state_dict()[key], value)
    open_loop = load_conditional_generator(tmp_path / "ft.pth", closed_loop_steps=0)
    with torch.no_grad():
        assert torch.equal(open_loop.wp(z, c), truncate(open_loop.mapping(z, c), base.w_avg, base.num_layers))
        assert not torch.allclose(open_loop.wp(z, c), model.wp(z, c))  # the loop moved w
    # Resume (as after a kill at step 3): the run continues from the saved state instead of starting over.
    assert torch.load(tmp_path / "work" / "state.pth", weights_only=True)["step"] == 3
    longer = FinetuneSettings(steps=6, batch_size=8, checkpoint_every=3, log_every=3)
    run(longer, "ft2.pth")
    assert list(pd.read_csv(tmp_path / "work" / "log.csv")["step"]) == [3, 6]  # steps 1-3 were not redone
    assert torch.load(tmp_path / "work" / "state.pth", weights_only=True)["step"] == 6
    # A shorter budget than the saved state's cannot be rewound to: it starts over.
    run(FinetuneSettings(steps=3, batch_size=8, checkpoint_every=3, log_every=3), "ft_short.pth")
    assert list(pd.read_csv(tmp_path / "work" / "log.csv")["step"]) == [3]
    assert torch.load(tmp_path / "work" / "state.pth", weights_only=True)["step"] == 3
    # Directions on other layers do not reuse the state either.
    moved = {**directions, "layer_mask": torch.ones(8, 6)}
    moved["layer_mask"][0, 0] = 0
    run(settings, "ft4.pth", moved)
    assert list(pd.read_csv(tmp_path / "work" / "log.csv")["step"]) == [3]
    assert torch.equal(
        load_conditional_generator(tmp_path / "ft4.pth").cond_mapping.direction_layer_mask, moved["layer_mask"]
    )
    # Other settings do not reuse the state.
    other = FinetuneSettings(steps=3, batch_size=8, checkpoint_every=3, log_every=3, control_weight=1.0)
    run(other, "ft3.pth")
    assert list(pd.read_csv(tmp_path / "work" / "log.csv")["step"]) == [3]


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
    z, c = torch.randn(5, 512), torch.rand(5, 7)
    wp0 = base.mapping(z).unsqueeze(1).repeat(1, 6, 1)

    def draw(wp):  # the "image" of wp is wp itself, so that the critic can read it linearly
        return wp

    # Two steps: the first may start from a female reading outside (0, 1), which the critic clamps.
    loop = ClosedLoop(critic, weights, fixed, steps=2, layer_mask=mask)
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


def test_direction_layers_find_the_layer_each_property_lives_on(base, directions):
    weights = directions["weights"].float()
    columns = [PARAM_INDEX[n] for n in (*PROPERTY_NAMES, "gender")]

    def read_truth(wp):  # the exact properties and p(female) of the drawn faces
        return base.render_params(truncate(wp, base.w_avg, base.num_layers))[:, columns]

    mask, effect = direction_layers(read_truth, base.mapping(torch.randn(32, 512)), weights, base.num_layers)
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


def test_stylegan_base_takes_per_layer_edits_and_the_closed_loop():
    """The real-weights path on a small random StyleGAN: starts as the base, per-layer edits reach only their
    layers, and the closed loop and the layer search run through its synthesis."""
    from vhuman.stylegan import StyleGANGenerator

    torch.manual_seed(0)
    gen = StyleGANGenerator(32, fmaps_base=256, fmaps_max=32).eval()
    layers = gen.num_layers
    weights = torch.randn(8, 512) / 512**0.5
    mask = torch.zeros(8, layers)
    mask[torch.arange(8), torch.arange(8) % 4] = 1  # the fine layers (4 and up) get no direction
    directions = {"weights": weights, "bias": torch.zeros(8), "fixed_targets": torch.ones(1), "layer_mask": mask}
    mapping = ConditionalMapping(gen, 7, torch.zeros(7), torch.ones(7), directions)
    critic = PropertyRegressor(width=8, input_size=32)
    loop = ClosedLoop(critic, weights, torch.ones(1), steps=1, layer_mask=mask)
    model = ConditionalGenerator(gen, mapping, closed_loop=loop)
    z, c = torch.randn(2, 512), torch.rand(2, 7)
    with torch.no_grad():
        assert torch.allclose(mapping(z, c), gen.mapping(z).unsqueeze(1).expand(-1, layers, -1), atol=1e-5)
        mapping.direction_gate.fill_(1.0)
        moved = (mapping(z, c) - gen.mapping(z).unsqueeze(1)).abs().amax(dim=(0, 2))
        assert torch.all(moved[4:] < 1e-5) and torch.all(moved[:4] > 0)
        assert model(z, c).shape == (2, 3, 32, 32)

    found, effect = directions_layer_mask(gen, critic, weights, gen.mapping(z).detach())
    assert found.shape == effect.shape == (8, layers) and torch.all(found.sum(1) >= 1)
    assert torch.all(found[7] == 1)  # the female row keeps every layer
