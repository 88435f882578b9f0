import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vhuman import synthetic
from vhuman.generate import generate_images
from vhuman.generators import SyntheticGenerator
from vhuman.io import column_vectors, load_image


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    generate_images(
        SyntheticGenerator(64, seed=0),
        num_images=10,
        base_seed=100,
        images_dir=out / "images",
        latents_path=out / "latents.parquet",
        batch_size=4,
        device="cpu",
        truth_path=out / "truth.parquet",
        progress=False,
    )
    return out


def test_every_image_has_its_seed_z_and_w(generated):
    table = pq.read_table(generated / "latents.parquet")
    assert table.column("image_id").to_pylist() == [f"{i:06d}" for i in range(10)]
    assert table.column("seed").to_pylist() == list(range(100, 110))
    assert column_vectors(table, "z").shape == (10, 512) and column_vectors(table, "w").shape == (10, 512)
    assert sorted(p.name for p in (generated / "images").iterdir()) == [f"{i:06d}.png" for i in range(10)]
    assert load_image(generated / "images" / "000000.png").shape == (64, 64, 3)


def test_one_image_redrawn_alone_from_its_seed_is_identical(generated, tmp_path):
    generate_images(
        SyntheticGenerator(64, seed=0),
        num_images=1,
        base_seed=103,
        images_dir=tmp_path / "images",
        latents_path=tmp_path / "latents.parquet",
        device="cpu",
        progress=False,
    )
    alone = load_image(tmp_path / "images" / "000000.png").astype(int)
    in_batch = load_image(generated / "images" / "000003.png").astype(int)
    # Matrix products round differently for other batch sizes: a grey level at most, on a few pixels.
    assert np.abs(alone - in_batch).max() <= 1 and (alone != in_batch).mean() < 0.01
    z_alone = column_vectors(pq.read_table(tmp_path / "latents.parquet"), "z")[0]
    assert np.array_equal(z_alone, column_vectors(pq.read_table(generated / "latents.parquet"), "z")[3])


def test_truth_table(generated):
    truth = pq.read_table(generated / "truth.parquet").to_pandas()
    assert list(truth.columns) == ["image_id", *synthetic.TRUTH_NAMES]
    assert len(truth) == 10 and truth["gender"].isin([0.0, 1.0]).all()
    assert truth["face_pose"].between(-1, 1).all() and truth["eyes"].between(0, 1).all()
    assert sorted(p.name for p in generated.iterdir()) == ["images", "latents.parquet", "truth.parquet"]
    assert not list(generated.rglob(".*.tmp"))


def test_precision_auto_follows_the_hardware():
    from vhuman.runtime import cpu_has_bfloat16, precision_dtype, precision_scope

    cpu = torch.device("cpu")
    assert precision_dtype(cpu, "float32") is None
    assert precision_dtype(cpu, "bfloat16") is torch.bfloat16
    assert precision_dtype(cpu, "float16") is torch.float16
    assert precision_dtype(cpu, "auto") is (torch.bfloat16 if cpu_has_bfloat16() else None)
    with pytest.raises(ValueError, match="precision must be"):
        precision_dtype(cpu, "float8")
    x = torch.randn(4, 8)
    with precision_scope(cpu, "bfloat16"):
        assert (x @ x.t()).dtype is torch.bfloat16
    with precision_scope(cpu, "float32"):
        assert (x @ x.t()).dtype is torch.float32


def test_training_inside_one_precision_scope_uses_the_updated_weights():
    """A scope around a whole training loop must not cache the first cast of each weight (autocast's default)."""
    from vhuman.runtime import precision_scope

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    x = torch.randn(64, 8)
    y = x @ torch.randn(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    with precision_scope(torch.device("cpu"), "bfloat16"):
        for _ in range(30):
            loss = (model(x).float() - y).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_float16_training_scales_its_losses_and_skips_overflowing_steps():
    """Under float16 the loops' scaler is active (a pass-through elsewhere); a loss whose gradients overflow
    leaves the weights untouched and lowers the scale; ordinary steps train."""
    from vhuman.runtime import loss_scaler, precision_scope, scaled_step

    cpu = torch.device("cpu")
    for precision in ("float32", "bfloat16"):
        with precision_scope(cpu, precision):
            assert not loss_scaler(cpu).is_enabled()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    x = torch.randn(64, 8)
    y = x @ torch.randn(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with precision_scope(cpu, "float16"):
        scaler = loss_scaler(cpu)
        assert scaler.is_enabled() and model(x).dtype is torch.float16
        before = model.weight.detach().clone()
        scale = scaler.get_scale()
        scaled_step(scaler, opt, (model(x).float() * float("inf")).mean())
        assert torch.equal(model.weight, before) and scaler.get_scale() < scale
        losses = []
        for _ in range(30):
            loss = (model(x).float() - y).pow(2).mean()
            scaled_step(scaler, opt, loss)
            losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_shards_cover_every_image_once_and_join_into_the_stage_s_outputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vhuman.shards import gather_shards, shard_range

    assert [list(shard_range(10, 3, s)) for s in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert sum(len(shard_range(7, 7, s)) for s in range(7)) == 7
    with pytest.raises(ValueError, match="shard 3 is not one of 0..2"):
        shard_range(10, 3, 3)
    dirs, tables = [], []
    for s, ids in enumerate([["000000", "000001"], ["000002"]]):
        d = tmp_path / f"shard{s}" / "images"
        d.mkdir(parents=True)
        (d / ".snakemake_timestamp").write_text("")
        for i in ids:
            (d / f"{i}.png").write_bytes(i.encode())
        table = pa.table({"image_id": ids}).replace_schema_metadata({"truncation_psi": "0.7"})
        pq.write_table(table, tmp_path / f"shard{s}.parquet")
        dirs.append([d])
        tables.append(tmp_path / f"shard{s}.parquet")
    out = tmp_path / "images"
    gather_shards(dirs, [out], [(tables, tmp_path / "latents.parquet")])
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert (out / "000002.png").read_bytes() == b"000002"
    joined = pq.read_table(tmp_path / "latents.parquet")
    assert joined.column("image_id").to_pylist() == ["000000", "000001", "000002"]
    assert joined.schema.metadata[b"truncation_psi"] == b"0.7"
    gather_shards(dirs, [out], [(tables, tmp_path / "latents.parquet")])  # a rerun after a kill: the same result
    assert len(list(out.iterdir())) == 3
