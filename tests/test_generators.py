import numpy as np
import pytest
import torch

from vhuman import synthetic, vocabulary
from vhuman.generators import SyntheticGenerator, generator_from_record, generator_record, load_generator
from vhuman.io import CheckpointError
from vhuman.latents import truncate
from vhuman.mobilestylegan import MobileStyleGANGenerator
from vhuman.stylegan import StyleGANGenerator


@pytest.fixture(scope="module")
def generator():
    return SyntheticGenerator(resolution=64, seed=0)


def test_interface_shapes_and_range(generator):
    z = torch.randn(5, generator.z_dim)
    with torch.no_grad():
        w = generator.mapping(z)
        wp = truncate(w, generator.w_avg, generator.num_layers)
        images = generator.synthesis(wp)
    assert w.shape == (5, generator.w_dim) and wp.shape == (5, generator.num_layers, generator.w_dim)
    assert images.shape == (5, 3, 64, 64) and images.min() >= -1 and images.max() <= 1


def test_same_seed_same_weights_and_other_seed_differs(generator):
    again = SyntheticGenerator(resolution=64, seed=0)
    for k, v in generator.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    other = SyntheticGenerator(resolution=64, seed=1)
    assert not torch.equal(other.mapping[0].weight, generator.mapping[0].weight)


def test_no_property_sits_on_one_axis_of_z_or_w(generator):
    z = torch.randn(4000, generator.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        w = generator.mapping(z)
        params = generator.render_params(truncate(w, generator.w_avg, generator.num_layers)).numpy()
    names = ("gender", *vocabulary.PROPERTY_NAMES)
    props = params[:, [synthetic.PARAM_INDEX[n] for n in names]]

    def max_abs_corr(a, b):
        a = (a - a.mean(0)) / a.std(0)
        b = (b - b.mean(0)) / b.std(0)
        return np.abs(a.T @ b / len(a)).max(0)

    for latent in (z.numpy(), w.numpy()):
        worst = max_abs_corr(latent, props)
        assert (worst < 0.45).all(), dict(zip(names, worst.round(2), strict=True))


def test_properties_cover_their_ranges_and_gender_is_balanced(generator):
    z = torch.randn(4000, generator.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        params = generator.render_params(truncate(generator.mapping(z), generator.w_avg, generator.num_layers))
    col = synthetic.PARAM_INDEX
    female = params[:, col["gender"]] > 0.5
    assert 0.4 < female.float().mean() < 0.6
    for name in ("eyes", "mouth", "hair_length", "background_std"):
        x = params[:, col[name]]
        assert x.min() < 0.05 and x.max() > 0.95, name
    assert params[:, col["face_pose"]].min() < -0.9 and params[:, col["face_pose"]].max() > 0.9
    bad = (params[:, col["quality"]] < 0.5).float().mean()
    assert 0.02 < bad < 0.08
    # gender shows in its cues
    hl = params[:, col["hair_length"]]
    assert hl[female].mean() > hl[~female].mean() + 0.2


def test_truncation():
    w = torch.randn(3, 8)
    w_avg = torch.randn(8)
    assert torch.equal(truncate(w, w_avg, 4), w.unsqueeze(1).repeat(1, 4, 1))
    wp = truncate(w, w_avg, 4, psi=0.5, layers=2)
    assert torch.allclose(wp[:, :2], (w_avg + 0.5 * (w - w_avg)).unsqueeze(1).expand(3, 2, 8))
    assert torch.equal(wp[:, 2:], w.unsqueeze(1).repeat(1, 2, 1))


def test_checkpoint_round_trip(generator, tmp_path):
    path = tmp_path / "g.pth"
    generator.save(path)
    loaded = load_generator(path)
    z = torch.randn(2, 512)
    with torch.no_grad():
        a = generator.synthesis(truncate(generator.mapping(z), generator.w_avg, 6))
        b = loaded.synthesis(truncate(loaded.mapping(z), loaded.w_avg, 6))
    assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


def test_bad_checkpoints_fail_with_the_file_name(generator, tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth: generator checkpoint not found"):
        load_generator(tmp_path / "missing.pth")
    good = tmp_path / "good.pth"
    generator.save(good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth: cannot read"):
        load_generator(truncated)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CheckpointError, match="other.pth: not a GenForce StyleGAN"):
        load_generator(other)
    with pytest.raises(CheckpointError, match="other.pth: not a synthetic-world generator"):
        load_generator(other, kind="synthetic")


def random_mobilestylegan(resolution: int) -> MobileStyleGANGenerator:
    gen = MobileStyleGANGenerator(resolution)
    with torch.no_grad():
        for tensor in gen.state_dict().values():
            tensor.normal_(0, 0.05)
    return gen


@pytest.mark.parametrize("kind", ["synthetic", "genforce", "mobilestylegan"])
def test_every_generator_shares_one_interface(kind, tmp_path):
    """Every stage uses only mapping (with the first layer's extra input), synthesis, num_layers, settings, save
    and the record; every generator answers them alike and rebuilds exactly from its own files."""
    torch.manual_seed(0)
    gen = {
        "synthetic": lambda: SyntheticGenerator(32, seed=0),
        "genforce": lambda: StyleGANGenerator(32, fmaps_base=256, fmaps_max=32),
        "mobilestylegan": lambda: random_mobilestylegan(32),
    }[kind]()
    gen.eval()
    assert gen.kind == kind
    z = torch.randn(3, gen.z_dim)
    extra = torch.zeros(3, gen.mapping.first_layer_width)
    with torch.no_grad():
        w = gen.mapping(z)
        assert torch.equal(gen.mapping(z, first_layer_extra=extra), w)
        assert not torch.allclose(gen.mapping(z, first_layer_extra=extra + 1), w)
        images = gen.synthesis(truncate(w, gen.w_avg, gen.num_layers))
    assert images.shape == (3, 3, 32, 32) and gen.resolution == 32
    wp = truncate(w, gen.w_avg, gen.num_layers).requires_grad_(True)  # the fine-tune backpropagates to the codes
    gen.synthesis(wp).square().mean().backward()
    assert torch.isfinite(wp.grad).all() and wp.grad.abs().sum() > 0
    again = generator_from_record(generator_record(gen), "record")
    gen.save(tmp_path / "g.pth")
    loaded = load_generator(tmp_path / "g.pth")
    assert again.settings == loaded.settings == gen.settings
    with torch.no_grad():
        for other in (again, loaded):
            assert torch.equal(other.synthesis(truncate(other.mapping(z), other.w_avg, other.num_layers)), images)


def test_synthetic_files_from_before_the_mapping_module_still_load(generator, tmp_path):
    old = {k.replace("mapping.", "mapping_net.", 1): v for k, v in generator.state_dict().items()}
    path = tmp_path / "old.pth"
    torch.save({"kind": "vhuman-synthetic-generator", "settings": generator.settings, "generator": old}, path)
    assert torch.equal(load_generator(path).mapping[0].weight, generator.mapping[0].weight)
