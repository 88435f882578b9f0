"""Fine-tune machinery on tiny settings: exact start, control improves, resume after a kill, controllers."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from vhuman.control import DirectionsController, control_metrics, draw_conditions, evaluate, fit_directions
from vhuman.generators import SyntheticGenerator, truncate
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
        assert torch.allclose(model.mapping(z, c), base.mapping(z), atol=1e-5)
        if with_directions:
            # Gates open: the mapping makes the baseline's edit, properties and the female row on target.
            mapping.direction_gate.fill_(1.0)
            w = model.mapping(z, c)
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

    def run(run_settings, out_name):
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
            directions=directions,
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
        w2 = ctrl.mapping(z, c)
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


def test_evaluate_with_truth_runs(base, world):
    table = world[0]
    mapping = ConditionalMapping(base, 7, torch.zeros(7), torch.ones(7))
    model = ConditionalGenerator(base, mapping)
    rows = table[list(PROPERTY_NAMES)].to_numpy(np.float32)
    result = evaluate(model, rows, num_z=3, levels=3, seed=0, with_truth=True, progress=False)
    assert result["images"] == 7 * 3 * 3
    # The untrained model ignores its conditions: the requested values do not come out.
    assert result["truth"]["eyes"]["share_of_z_passing"] < 0.5


class LinearCritic(torch.nn.Module):
    """Reads the properties as an exact linear function of w, and p(female) as another: what the closed loop's
    step assumes, so its steps must land on the requested values."""

    width, input_size = 8, 64

    def __init__(self, weights, bias):
        super().__init__()
        self.weights, self.bias = weights.float(), bias.float()

    def forward(self, w):
        reading = w @ self.weights.t() + self.bias
        return reading[:, :7], torch.logit(reading[:, 7].clamp(1e-4, 1 - 1e-4))


def test_closed_loop_lands_on_the_request_when_the_critic_is_linear(base, directions):
    weights, bias = directions["weights"].float(), directions["bias"].float()
    critic = LinearCritic(weights, bias)
    fixed = torch.tensor([0.9])  # inside (0, 1), where the female reading is exact
    z, c = torch.randn(5, 512), torch.rand(5, 7)
    w0 = base.mapping(z)

    def draw(w):  # the "image" of w is w itself, so that the critic can read it linearly
        return w

    # Two steps: the first may start from a female reading outside (0, 1), which the critic clamps.
    loop = ClosedLoop(critic, weights, fixed, steps=2)
    read, female_logit = critic(loop(w0, c, draw))
    assert torch.allclose(read, c, atol=1e-3)
    assert torch.allclose(torch.sigmoid(female_logit), fixed.expand(5), atol=1e-3)
    assert not torch.allclose(critic(w0)[0], c, atol=0.1)  # it had somewhere to go
    assert torch.equal(ClosedLoop(critic, weights, fixed, steps=0)(w0, c, draw), w0)
    with pytest.raises(ValueError, match="direction rows"):
        ClosedLoop(critic, weights[:5], fixed, steps=1)


def test_directions_controller_with_a_closed_loop_of_zero_steps_is_the_open_baseline(base, directions):
    weights, bias, fixed = directions["weights"], directions["bias"], directions["fixed_targets"]
    loop = ClosedLoop(PropertyRegressor(width=8), weights, fixed, steps=0)
    plain = DirectionsController(base, weights, bias, fixed)
    looped = DirectionsController(base, weights, bias, fixed, closed_loop=loop)
    z, c = torch.randn(3, 512), torch.rand(3, 7)
    with torch.no_grad():
        assert torch.equal(plain(z, c), looped(z, c))
        loop.steps = 1
        assert not torch.equal(plain(z, c), looped(z, c))
