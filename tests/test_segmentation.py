import numpy as np
import pytest
import torch

from tests.conftest import default_config
from vhuman import segmentation
from vhuman.generate import generate_images
from vhuman.generators import SyntheticGenerator
from vhuman.io import CheckpointError, load_label_map, save_png
from vhuman.latents import latent_for_seed, truncate
from vhuman.synthetic import render_faces, sample_face_params
from vhuman.vocabulary import CLASS_ID, LABEL_PALETTE


def test_mirroring_swaps_left_and_right_classes():
    labels = torch.zeros(1, 4, 4, dtype=torch.uint8)
    labels[0, 1, 0] = CLASS_ID["l_eye"]
    images = torch.zeros(1, 3, 4, 4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):  # one of these draws mirrors
        _, out = segmentation._augment(images, labels, gen)
        if out[0, 1, 3] == CLASS_ID["r_eye"]:
            break
    else:
        pytest.fail("no mirrored sample in 10 draws")
    assert out[0, 1, 0] == 0


def test_iou_report():
    truth = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    rep = segmentation.iou_report(segmentation.confusion(pred, truth))
    assert rep["per_class"]["background"] == pytest.approx(0.5)
    assert rep["per_class"]["skin"] == pytest.approx(2 / 3)
    assert rep["miou"] == pytest.approx((0.5 + 2 / 3) / 2) and rep["pixel_accuracy"] == 0.75


@pytest.fixture(scope="module")
def parser_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("parser")
    defaults = default_config()["segmentation"]["world_parser"]
    settings = segmentation.ParserSettings(
        **defaults | dict(train_images=200, steps=300, batch_size=8, width=8, train_mask_resolution=64)
    )
    metrics = segmentation.train_world_parser(settings, out / "parser.pth", 128, out / "metrics.json", progress=False)
    return out / "parser.pth", metrics


def test_world_parser_learns_the_big_regions(parser_file):
    _, metrics = parser_file
    per_class = metrics["held_out_renders"]["per_class"]
    # A short run already separates background, skin and hair; the workflow trains 10x longer.
    assert per_class["background"] > 0.8 and per_class["skin"] > 0.6 and per_class["hair"] > 0.6


def test_chunked_labels_are_the_argmax_of_the_whole_batchs_logits(parser_file):
    model = segmentation.load_world_parser(parser_file[0])
    with torch.inference_mode():
        images = render_faces(sample_face_params(5, seed=7), 64).images
        whole = model.logits_at(images, 128).argmax(1).to(torch.uint8)
        # a chunk of 2 images at 128x128: chunks of 2, 2 and 1
        assert torch.equal(model.labels_at(images, 128, chunk_pixels=2 * 128 * 128), whole)
        assert torch.equal(model.labels_at(images, 64), model(images).argmax(1).to(torch.uint8))


def test_segment_images_writes_palette_masks_at_the_mask_size(parser_file, tmp_path):
    path, _ = parser_file
    generator = SyntheticGenerator(64, seed=0)
    generate_images(generator, 3, 5, tmp_path / "images", tmp_path / "latents.parquet", device="cpu", progress=False)
    ids = ["000000", "000001", "000002"]
    parser = segmentation.Parser("world", path, 128, torch.device("cpu"))
    segmentation.segment_images(parser, tmp_path / "images", ids, tmp_path / "masks", batch_size=2, progress=False)
    mask = load_label_map(tmp_path / "masks" / "000001.png")
    assert mask.shape == (128, 128) and mask.max() < 19
    agreement = segmentation.agreement_with_rendered_truth(
        tmp_path / "masks", generator, tmp_path / "latents.parquet", ids
    )
    assert agreement["images"] == 3 and agreement["pixel_accuracy"] > 0.8
    # The truth drawn from the stored codes is the generator's own label map of each image, at the masks' size.
    with torch.inference_mode():
        wp = truncate(
            generator.mapping(torch.stack([latent_for_seed(5 + i, generator.z_dim) for i in range(3)])),
            generator.w_avg,
            generator.num_layers,
        )
        truth = generator.synthesis_with_truth(wp, 128).labels.numpy()
    for i in ids:
        save_png(truth[int(i)], tmp_path / "truth" / f"{i}.png", palette=LABEL_PALETTE)
    exact = segmentation.agreement_with_rendered_truth(tmp_path / "truth", generator, tmp_path / "latents.parquet", ids)
    assert exact["pixel_accuracy"] == 1.0 and exact["miou"] == 1.0


def test_wrong_parser_files_fail_clearly(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"kind": "something else"}, other)
    with pytest.raises(CheckpointError, match="other.pth: not a world-parser checkpoint"):
        segmentation.load_world_parser(other)
    with pytest.raises(ValueError, match="unknown parser kind"):
        segmentation.Parser("magic", other, 128, torch.device("cpu"))
