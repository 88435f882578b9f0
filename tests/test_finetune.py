"""The fine-tune loop on tiny settings: the file it writes, and resume after a kill."""

import pandas as pd
import pytest
import torch

from tests.conftest import default_config
from vhuman.amortise import AmortiseSettings
from vhuman.conditional import load_conditional_generator
from vhuman.finetune import FinetuneSettings, finetune
from vhuman.latents import truncate
from vhuman.regressor import PropertyRegressor
from vhuman.runtime import precision_scope


def tiny_settings(**changes) -> FinetuneSettings:
    return FinetuneSettings(
        **{**default_config()["finetune"]["train"], "steps": 3, "batch_size": 8, "checkpoint_every": 3, "log_every": 3}
        | changes
    )


@pytest.fixture()
def run_finetune(base, world, directions, tmp_path):
    table, _, images = world
    torch.manual_seed(0)
    regressor = PropertyRegressor(width=8)  # untrained critic: enough to test the mechanics, not the quality

    def run(settings, out_name, work="work", run_directions=directions, amortise=None):
        finetune(
            base,
            None,
            regressor,
            table,
            images,
            settings,
            tmp_path / work,
            tmp_path / out_name,
            {"base_sha256": "x"},
            torch.device("cpu"),
            progress=False,
            directions=run_directions,
            amortise_settings=amortise,
        )
        return tmp_path / out_name

    run.regressor = regressor
    return run


def steps_logged(path) -> list[int]:
    return list(pd.read_csv(path / "log.csv")["step"])


def test_finetune_writes_a_model_that_draws_with_its_closed_loop(run_finetune, base, tmp_path):
    settings = tiny_settings()
    path = run_finetune(settings, "ft.pth")
    log = pd.read_csv(tmp_path / "work" / "log.csv")
    assert list(log["step"]) == [3] and {"control", "d_loss", "r_eyes", "female_rate"} <= set(log.columns)
    model = load_conditional_generator(path)
    z, c = torch.randn(2, 512), torch.rand(2, 7)
    with torch.no_grad():
        assert model(z, c).shape == (2, 3, 64, 64)
    # The file carries its closed loop: the critic it was trained against and the configured number of steps.
    assert model.closed_loop.steps == settings.closed_loop_steps == 2
    for key, value in run_finetune.regressor.state_dict().items():
        assert torch.equal(model.closed_loop.critic.state_dict()[key], value)
    open_loop = load_conditional_generator(path, closed_loop_steps=0)
    with torch.no_grad():
        assert torch.equal(open_loop.wp(z, c), truncate(open_loop.mapping(z, c), base.w_avg, base.num_layers))
        assert not torch.allclose(open_loop.wp(z, c), model.wp(z, c))  # the loop moved w


def test_finetune_resumes_to_the_clean_result_and_starts_over_when_it_must(run_finetune, directions, tmp_path):
    run_finetune(tiny_settings(), "first.pth")
    assert torch.load(tmp_path / "work" / "state.pth", weights_only=True)["step"] == 3
    # As after a kill at step 3: a 6-step run continues from the saved state instead of starting over...
    resumed = run_finetune(tiny_settings(steps=6), "resumed.pth")
    assert steps_logged(tmp_path / "work") == [3, 6]  # steps 1-3 were not redone
    # ...and ends where an uninterrupted 6-step run ends.
    clean = run_finetune(tiny_settings(steps=6), "clean.pth", work="clean")
    a = torch.load(resumed, weights_only=True)["mapping"]
    b = torch.load(clean, weights_only=True)["mapping"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    # A shorter budget than the saved state's cannot be rewound to: it starts over.
    run_finetune(tiny_settings(), "short.pth")
    assert steps_logged(tmp_path / "work") == [3]
    assert torch.load(tmp_path / "work" / "state.pth", weights_only=True)["step"] == 3
    # Directions on other layers do not reuse the state either.
    moved = {**directions, "layer_mask": torch.ones(8, 6)}
    moved["layer_mask"][0, 0] = 0
    path = run_finetune(tiny_settings(), "moved.pth", run_directions=moved)
    assert steps_logged(tmp_path / "work") == [3]
    assert torch.equal(load_conditional_generator(path).cond_mapping.direction_layer_mask, moved["layer_mask"])
    # Other settings do not reuse the state.
    run_finetune(tiny_settings(control_weight=1.0), "other.pth")
    assert steps_logged(tmp_path / "work") == [3]


def test_finetune_state_is_not_resumed_in_another_precision(run_finetune, tmp_path):
    def mapping(path):
        return torch.load(path, weights_only=True)["mapping"]

    first = run_finetune(tiny_settings(), "first.pth")
    again = run_finetune(tiny_settings(), "again.pth")  # same precision: the finished state is taken as it is
    assert all(torch.equal(mapping(first)[k], v) for k, v in mapping(again).items())
    with precision_scope(torch.device("cpu"), "bfloat16"):
        other = run_finetune(tiny_settings(), "bfloat16.pth")  # trained again, in bfloat16
    assert not all(torch.equal(mapping(first)[k], v) for k, v in mapping(other).items())


@pytest.mark.parametrize("samples", [0, 8])
def test_finetune_amortises_its_loop_when_asked(run_finetune, tmp_path, samples):
    small = {"samples": samples, "steps": 3, "round_samples": 8, "round_steps": 2, "batch_size": 8}
    amortise = AmortiseSettings(**{**default_config()["finetune"]["amortise"], **small})
    path = run_finetune(tiny_settings(), "ft.pth", amortise=amortise)
    model = load_conditional_generator(path, closed_loop_steps=0)
    saved = torch.load(path, weights_only=False)
    if samples:
        assert int(model.cond_mapping.latent_steps) == amortise.drawing_steps
        assert len(saved["amortise"]["landing_rms"]) == amortise.rounds
        assert (tmp_path / "work" / "amortise.json").exists()
    else:
        assert model.cond_mapping.latent_model is None and "amortise" not in saved


def test_the_fine_tune_draws_as_the_data_was_drawn_and_its_file_keeps_drawing_so(run_finetune, base, directions):
    truncated = {**directions, "truncation": {"psi": 0.6, "layers": 3}}
    path = run_finetune(tiny_settings(), "truncated.pth", work="truncated", run_directions=truncated)
    model = load_conditional_generator(path, closed_loop_steps=0)
    assert model.truncation == {"psi": 0.6, "layers": 3}
    z, c = torch.randn(2, 512), torch.rand(2, 7)
    with torch.no_grad():
        codes = model.mapping(z, c)
        assert torch.equal(model.wp(z, c), truncate(codes, base.w_avg, base.num_layers, 0.6, 3))
        assert torch.equal(model.wp(z, c, psi=1.0), truncate(codes, base.w_avg, base.num_layers))  # asked for
    untruncated = load_conditional_generator(run_finetune(tiny_settings(), "plain.pth", work="plain"))
    assert untruncated.truncation == {"psi": 1.0, "layers": None}
