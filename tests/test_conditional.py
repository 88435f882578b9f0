"""The conditional generator: exact start as the base, the gated edit, per-layer edits on a StyleGAN base."""

import pytest
import torch

from vhuman.conditional import ConditionalGenerator, ConditionalMapping
from vhuman.directions import ClosedLoop
from vhuman.layer_probe import directions_layer_mask
from vhuman.regressor import PropertyRegressor
from vhuman.stylegan import StyleGANGenerator
from vhuman.vocabulary import PROPERTY_NAMES


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


def test_stylegan_base_takes_per_layer_edits_and_the_closed_loop():
    """The real-weights path on a small random StyleGAN: starts as the base, per-layer edits reach only their
    layers, and the closed loop and the layer search run through its synthesis."""
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


def test_edits_stay_within_the_reach_of_the_generator_s_own_codes(base, directions):
    """A request past what the data reads (or a latent model that pushes further) stops at the reach box's edge,
    moved along the directions only; a request inside it is untouched."""
    from vhuman.directions import linear_reading

    assert {"reach_low", "reach_high"} <= set(directions)
    assert torch.all(directions["reach_low"] < directions["reach_high"])
    mapping = ConditionalMapping(base, 7, torch.zeros(7), torch.ones(7), directions)
    with torch.no_grad():
        mapping.direction_gate.fill_(1.0)  # the full linear edit: the mapping reads exactly the request
        z = torch.randn(6, 512, generator=torch.Generator().manual_seed(0))
        c = torch.full((6, 7), 0.5)
        far = c.clone()
        far[:, 0] = 40.0  # eyes far past anything the data reads
        weights, bias, mask = mapping.direction_weights, mapping.direction_bias, mapping.direction_layer_mask
        inside = linear_reading(mapping(z, c), weights, bias, mask)
        outside = linear_reading(mapping(z, far), weights, bias, mask)
    high = mapping.reach_high
    origin = base.mapping(z) @ mapping.direction_weights.t() + mapping.direction_bias  # the unedited reading
    ceiling = torch.maximum(high[0], origin[:, 0])  # a face the base draws past the edge stays where it was
    assert torch.allclose(outside[:, 0], ceiling, atol=1e-3) and (origin[:, 0] < high[0]).sum() >= 4
    assert torch.allclose(inside[:, :7], c, atol=1e-3)  # inside the box: the edit as it was


def test_a_fine_tune_step_moves_mobilestylegans_folded_mapping_as_far_as_stylegan2s_training_did():
    """The export folds StyleGAN2's learning-rate multiplier (0.01) and equalisation into the mapping's weights;
    the optimiser groups undo it, so one Adam step of lr moves a weight by lr * 0.01 / sqrt(fan-in), a bias by
    lr * 0.01, and the property input and the gates at their own rates."""
    from types import SimpleNamespace

    from vhuman.mobilestylegan import MobileMapping

    torch.manual_seed(0)
    base = SimpleNamespace(mapping=MobileMapping(z_dim=64, w_dim=64, num_layers=2), num_layers=3, z_dim=64)
    directions = {"weights": torch.randn(8, 64) * 0.1, "bias": torch.zeros(8), "fixed_targets": torch.ones(1)}
    mapping = ConditionalMapping(base, 7, torch.zeros(7), torch.ones(7), directions)
    lr = 1e-3
    opt = torch.optim.Adam(mapping.parameter_groups(lr, 0.02), betas=(0.0, 0.99))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(mapping.parameters()))
    before = {n: p.detach().clone() for n, p in mapping.named_parameters()}
    mapping(torch.randn(16, 64), torch.rand(16, 7)).pow(2).sum().backward()
    opt.step()
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in mapping.named_parameters()}
    for name in ("layers.dense.0.weight", "layers.dense.1.weight"):
        assert moved[name] == pytest.approx(lr * 0.01 / 8, rel=0.02)  # fan-in 64; Adam's first step is lr
    assert moved["layers.dense.1.bias"] == pytest.approx(lr * 0.01, rel=0.02)
    assert moved["condition_weight"] == pytest.approx(lr, rel=1e-3)
    assert moved["direction_gate"] == pytest.approx(0.02, rel=1e-3)
