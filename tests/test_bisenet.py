"""BiSeNet: strict loading of the published checkpoint format and the reference outputs (shared/reference/bisenet)."""

import numpy as np
import pytest
import torch

from tests.conftest import reference_file
from tests.fixtures.seeded_weights import bisenet_weights, seeded_input
from vhuman.bisenet import BiSeNet, load_bisenet, parse_faces, preprocess
from vhuman.io import CheckpointError


@pytest.fixture(scope="module")
def fixture():
    return torch.load(reference_file("bisenet", "bisenet_fixture.pt"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def legacy_file(fixture, tmp_path_factory):
    """The fixture's weights saved like 79999_iter.pth: a plain state dict in the legacy (non-zip) format."""
    path = tmp_path_factory.mktemp("bisenet") / "79999_iter.pth"
    torch.save(fixture["state_dict"], path, _use_new_zipfile_serialization=False)
    return path


def test_reproduces_reference_outputs(fixture, legacy_file):
    net = load_bisenet(legacy_file)
    with torch.no_grad():
        out = net(fixture["input"])
        out_odd = net(fixture["input_odd"])
    for got, name in zip(out, ("out", "out16", "out32"), strict=True):
        torch.testing.assert_close(got, fixture[name], rtol=1e-4, atol=1e-4)
    for got, name in zip(out_odd, ("out_odd", "out16_odd", "out32_odd"), strict=True):
        torch.testing.assert_close(got, fixture[name], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        feat8, u16, u32 = net.cp(fixture["input"])
    torch.testing.assert_close(u16, fixture["intermediates"]["cp[1]"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(u32, fixture["intermediates"]["cp[2]"], rtol=1e-4, atol=1e-4)


def test_state_dict_has_the_published_keys(fixture):
    sd = BiSeNet().state_dict()
    assert list(sd) == list(fixture["state_dict"])
    assert len(sd) == 191
    params = sum(p.numel() for p in BiSeNet().parameters())
    assert params == 13_300_416


def test_bad_files_fail_with_one_clear_error(fixture, legacy_file, tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pth: BiSeNet checkpoint not found"):
        load_bisenet(tmp_path / "nothere.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(legacy_file.read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match="truncated.pth: cannot read"):
        load_bisenet(truncated)
    wrong = tmp_path / "stylegan.pth"
    torch.save({"mapping.dense0.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(CheckpointError, match="stylegan.pth: not a BiSeNet"):
        load_bisenet(wrong)
    damaged = dict(fixture["state_dict"])
    del damaged["conv_out.conv_out.weight"]
    partial = tmp_path / "partial.pth"
    torch.save(damaged, partial)
    with pytest.raises(CheckpointError, match="partial.pth: BiSeNet weights do not fit.*conv_out.conv_out.weight"):
        load_bisenet(partial)


def test_preprocessing_and_parsing_shapes(legacy_file):
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = preprocess(images)
    assert x.shape == (2, 3, 512, 512)
    # ImageNet normalisation of a mid-grey pixel
    grey = preprocess(np.full((1, 8, 8, 3), 128, np.uint8))[0, :, 0, 0]
    torch.testing.assert_close(
        grey,
        (torch.tensor([128 / 255] * 3) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]),
    )
    labels = parse_faces(load_bisenet(legacy_file), images[:1], torch.device("cpu"))
    assert labels.shape == (1, 512, 512) and labels.dtype == np.uint8 and labels.max() < 19


def test_seeded_network_reproduces_the_reference_outputs(reference_outputs, tmp_path):
    """Our BiSeNet with seeded weights, saved like 79999_iter.pth and loaded by the workflow's loader, gives the
    reference implementation's three heads (a square input) and its main head on an odd-sized input."""
    want = reference_outputs["bisenet"]
    path = tmp_path / "79999_iter.pth"
    torch.save(bisenet_weights(BiSeNet().state_dict(), 3), path, _use_new_zipfile_serialization=False)
    net = load_bisenet(path)
    with torch.no_grad():
        heads = net(seeded_input((1, 3, 32, 32), 4))
        odd = net(seeded_input((1, 3, 24, 40), 5))[0]
    for got, name in zip(heads, ("out", "out16", "out32"), strict=True):
        scale = want[name].abs().max().item()
        torch.testing.assert_close(got, want[name], rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(odd, want["out_odd"], rtol=1e-4, atol=1e-5 * want["out_odd"].abs().max().item())
    assert not torch.allclose(heads[0], heads[1])  # the heads differ: each is checked on its own
