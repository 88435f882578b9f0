"""GenForce StyleGAN: strict loading and the reference implementation's outputs (shared/reference/genforce)."""

import json

import pytest
import torch

from tests.conftest import reference_file
from tests.fixtures.seeded_weights import genforce_weights, seeded_input
from vhuman.discriminator import DownsampleConv, StyleGANDiscriminator, minibatch_std
from vhuman.generators import load_generator
from vhuman.genforce import discriminator_from_checkpoint, save_genforce_checkpoint
from vhuman.io import CheckpointError, to_uint8
from vhuman.stylegan import StyleGANGenerator


@pytest.fixture(scope="module")
def fixture():
    path = reference_file("genforce", "genforce_stylegan_fixture.pt")
    meta = json.loads(path.with_suffix(".json").read_text())
    return torch.load(path, map_location="cpu", weights_only=True), meta


@pytest.fixture(scope="module")
def zoo_file(fixture, tmp_path_factory):
    """The fixture's networks saved in the model-zoo layout a user downloads."""
    data, _ = fixture
    path = tmp_path_factory.mktemp("zoo") / "stylegan.pth"
    torch.save({"generator": data["generator_state_dict"], "discriminator": data["discriminator_state_dict"]}, path)
    return path


def assert_matches_reference(generator, z, want, psi, layers):
    """Mapping, truncation, synthesis with and without truncation, and the uint8 images, against the reference."""
    with torch.no_grad():
        w = generator.mapping(z)
        wp = generator.truncation(w, psi, layers)
        image = generator.synthesis(generator.truncation(w))
        image_t = generator.synthesis(wp)
    torch.testing.assert_close(w, want["w"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(wp, want["wp_truncated"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(image, want["image"], atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(image_t, want["image_truncated"], atol=2e-3, rtol=1e-4)
    as_uint8 = torch.from_numpy(to_uint8(image_t)).permute(0, 3, 1, 2).int()
    assert (as_uint8 - want["image_truncated_uint8"].int()).abs().max() <= 1


def assert_matches_shared_fixture(generator, data, meta):
    assert "atol 2e-3, rtol 1e-4" in meta["tolerance"]  # the tolerances used in assert_matches_reference
    assert_matches_reference(generator, data["z"], data, data["trunc_psi"], data["trunc_layers"])


def test_generator_reproduces_reference_outputs(fixture, zoo_file):
    data, meta = fixture
    generator = load_generator(zoo_file)
    assert isinstance(generator, StyleGANGenerator) and generator.resolution == 128
    assert generator.num_layers == data["wp_truncated"].shape[1]
    assert_matches_shared_fixture(generator, data, meta)


def test_discriminator_reproduces_reference_scores(fixture, zoo_file):
    data, _ = fixture
    disc = discriminator_from_checkpoint(torch.load(zoo_file, weights_only=True), zoo_file)
    with torch.no_grad():
        torch.testing.assert_close(disc(data["image"]), data["d_score"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(disc(data["image_truncated"]), data["d_score_truncated"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", ["bare", "training_snapshot", "module_prefix", "smooth_preferred"])
def test_checkpoint_layouts(fixture, tmp_path, layout):
    data, meta = fixture
    sd = data["generator_state_dict"]
    if layout == "bare":
        ckpt = sd
    elif layout == "training_snapshot":
        ckpt = {"models": {"generator": sd}, "running_metadata": {"iter": 7}}
    elif layout == "module_prefix":
        ckpt = {"generator": {f"module.{k}": v for k, v in sd.items()}}
    else:  # sampling uses the EMA copy when the file has one
        broken = {k: torch.zeros_like(v) for k, v in sd.items()}
        ckpt = {"generator": broken, "generator_smooth": sd}
    path = tmp_path / "g.pth"
    torch.save(ckpt, path)
    assert_matches_shared_fixture(load_generator(path), data, meta)


def test_saved_checkpoint_reloads_strictly(fixture, zoo_file, tmp_path):
    data, meta = fixture
    generator = load_generator(zoo_file)
    disc = discriminator_from_checkpoint(torch.load(zoo_file, weights_only=True), zoo_file)
    out = tmp_path / "ours.pth"
    save_genforce_checkpoint(out, generator, disc, generator_smooth=generator)
    ckpt = torch.load(out, weights_only=True)
    assert set(ckpt) == {"generator", "discriminator", "generator_smooth"}
    assert set(ckpt["generator"]) == set(data["generator_state_dict"])
    assert set(ckpt["discriminator"]) == set(data["discriminator_state_dict"])
    assert_matches_shared_fixture(load_generator(out), data, meta)


def test_bad_files_fail_with_one_clear_error(fixture, zoo_file, tmp_path):
    data, _ = fixture
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(zoo_file.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated.pth: cannot read"):
        load_generator(truncated)
    wrong = tmp_path / "discriminator_only.pth"
    torch.save(data["discriminator_state_dict"], wrong)
    with pytest.raises(CheckpointError, match="discriminator_only.pth: not a GenForce StyleGAN"):
        load_generator(wrong)
    with pytest.raises(CheckpointError, match="stylegan.pth: this generator draws 128x128 images but the config"):
        load_generator(zoo_file, resolution=256)
    damaged = dict(data["generator_state_dict"])
    damaged["synthesis.layer3.weight"] = damaged["synthesis.layer3.weight"][:, :4]
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save({"generator": damaged}, bad_shape)
    with pytest.raises(CheckpointError, match="bad_shape.pth: generator weights do not fit.*layer3.weight"):
        load_generator(bad_shape)


def test_celeba_partial_256_has_the_published_key_table():
    gen = StyleGANGenerator(256)
    sd = gen.state_dict()
    assert len(sd) == 122 and sum(v.numel() for v in sd.values()) == 26_279_350
    assert sd["synthesis.layer12.weight"].shape == (64, 128, 3, 3) and gen.num_layers == 14
    disc = StyleGANDiscriminator(256)
    sd = disc.state_dict()
    assert len(sd) == 51 and sum(v.numel() for v in sd.values()) == 23_070_210
    assert sd["layer12.weight"].shape == (512, 513, 3, 3) and sd["layer13.weight"].shape == (512, 8192)


def test_the_down_sampling_conv_is_genforces_pool_of_a_conv_in_one_strided_conv():
    torch.manual_seed(0)
    layer = DownsampleConv(5, 7)
    layer.bias.data.normal_()
    x = torch.randn(2, 5, 16, 16, requires_grad=True)
    # GenForce's unfused form, written out: blur, 3x3 conv with bias, 2x2 average pool, leaky ReLU
    conv = torch.nn.functional.conv2d(layer.blur(x), layer.weight * layer.wscale, layer.bias, padding=1)
    reference = torch.nn.functional.leaky_relu(torch.nn.functional.avg_pool2d(conv, 2), 0.2)
    ours = layer(x)
    assert ours.shape == (2, 7, 8, 8)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    g_ours, g_ref = (torch.autograd.grad(y.square().sum(), x)[0] for y in (ours, reference))
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-5)


def test_minibatch_std_groups_samples_by_index():
    x = torch.randn(8, 3, 4, 4)
    y = minibatch_std(x, group_size=4)
    assert y.shape == (8, 4, 4, 4)
    # samples i and i + N/G share a group, so they share the statistic
    torch.testing.assert_close(y[0, 3], y[2, 3])
    group = x[0::2]
    expected = group.std(0, unbiased=False).mean()
    torch.testing.assert_close(y[0, 3, 0, 0], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        minibatch_std(torch.randn(6, 3, 4, 4), group_size=4)


def test_noise_modes(fixture, zoo_file):
    data, _ = fixture
    generator = load_generator(zoo_file)
    wp = generator.truncation(generator.mapping(data["z"][:2]))
    with torch.no_grad():
        const_a, const_b = generator.synthesis(wp), generator.synthesis(wp)
        random_a = generator.synthesis(wp, noise_mode="random")
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(const_a, random_a)


def test_fast_paths_agree_with_the_plain_ones():
    """Channels-last activations and the inference-mode kernel cache change speed, not results; the cache is
    rebuilt when a weight changes."""
    torch.manual_seed(0)
    gen = StyleGANGenerator(128, fmaps_base=1024, fmaps_max=32).eval()  # 128: fused up-sampling too
    with torch.no_grad():
        for p in gen.parameters():
            p.normal_()
    z = torch.randn(3, 512)
    with torch.inference_mode():
        fast = gen.synthesis(gen.truncation(gen.mapping(z)))
        gen.synthesis.channels_last = False
        plain = gen.synthesis(gen.truncation(gen.mapping(z)))
    with torch.no_grad():
        grad_mode = gen.synthesis(gen.truncation(gen.mapping(z)))
    assert torch.allclose(fast, plain, atol=1e-4, rtol=1e-4)
    assert torch.allclose(plain, grad_mode, atol=1e-5)
    with torch.no_grad():
        gen.synthesis.layer10.weight.mul_(-1)  # the fused up-sampling layer at 128
    with torch.inference_mode():
        changed = gen.synthesis(gen.truncation(gen.mapping(z)))
    with torch.no_grad():
        expected = gen.synthesis(gen.truncation(gen.mapping(z)))
    assert not torch.allclose(changed, plain) and torch.allclose(changed, expected, atol=1e-5)


# ---- committed fixtures: seeded weights, the reference implementation's outputs ---------------------------------

COMPACT = {
    # name: resolution, our generator's settings, our discriminator's settings, weight seed (as in the fixture README)
    "stylegan64_fused": (
        64,
        dict(z_dim=64, w_dim=64, mapping_fmaps=64, fmaps_base=512, fmaps_max=16, fused_scale=True),
        dict(fmaps_base=512, fmaps_max=16, fused_scale=True),
        1,
    ),
    "stylegan32_auto": (
        32,
        dict(z_dim=64, w_dim=64, mapping_fmaps=64, fmaps_base=256, fmaps_max=16),
        dict(fmaps_base=256, fmaps_max=16),
        2,
    ),
}


@pytest.mark.parametrize("name", list(COMPACT))
def test_seeded_networks_reproduce_the_reference_outputs(reference_outputs, name, tmp_path):
    """Fused (transposed-conv / strided) and unfused up- and down-sampling, truncation, the discriminator: our
    networks, loaded strictly with the seeded weights, give GenForce's numbers."""
    res, g_kwargs, d_kwargs, seed = COMPACT[name]
    want = reference_outputs[name]
    gen = StyleGANGenerator(res, **g_kwargs).eval()
    gen.load_state_dict(genforce_weights(gen.state_dict(), seed), strict=True)
    disc = StyleGANDiscriminator(res, **d_kwargs).eval()
    disc.load_state_dict(genforce_weights(disc.state_dict(), seed + 100), strict=True)
    z = seeded_input((4, g_kwargs["z_dim"]), seed + 200)
    assert_matches_reference(gen, z, want, 0.7, 4)
    with torch.no_grad():
        torch.testing.assert_close(disc(want["image"]), want["d_score"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(disc(want["image_truncated"]), want["d_score_truncated"], atol=1e-4, rtol=1e-4)
    # The same weights through the user's path: a model-zoo file, read back by the loader (unfused 'auto' only:
    # a file does not say whether it was trained with fused up-sampling).
    if g_kwargs.get("fused_scale", "auto") == "auto":
        torch.save({"generator": gen.state_dict(), "discriminator": disc.state_dict()}, tmp_path / "zoo.pth")
        loaded = load_generator(tmp_path / "zoo.pth", resolution=res)
        with torch.no_grad():
            torch.testing.assert_close(
                loaded.synthesis(loaded.truncation(loaded.mapping(z))), want["image"], atol=2e-3, rtol=1e-4
            )


def test_a_wrong_weight_is_caught_by_the_fixture(reference_outputs):
    """The check can fail: one weight changed a little changes the image beyond the tolerance."""
    res, g_kwargs, _, seed = COMPACT["stylegan32_auto"]
    gen = StyleGANGenerator(res, **g_kwargs).eval()
    weights = genforce_weights(gen.state_dict(), seed)
    weights["synthesis.layer5.weight"][0, 0, 1, 1] += 0.5
    gen.load_state_dict(weights, strict=True)
    with torch.no_grad():
        image = gen.synthesis(gen.truncation(gen.mapping(seeded_input((4, 64), seed + 200))))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(image, reference_outputs["stylegan32_auto"]["image"], atol=2e-3, rtol=1e-4)
