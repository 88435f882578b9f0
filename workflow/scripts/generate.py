import torch

from vhuman.generate import generate_images
from vhuman.generators import load_generator
from vhuman.io import logging_to, verify_sha256
from vhuman.shards import shard_range

with logging_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    verify_sha256(snakemake.input.checkpoint, snakemake.params.sha256)
    generator = load_generator(snakemake.input.checkpoint, snakemake.params.kind, snakemake.params.resolution)
    synthetic = bool(snakemake.output.truth)
    generate_images(
        generator,
        num_images=snakemake.params.num_images,
        base_seed=snakemake.params.seed,
        images_dir=snakemake.output.images,
        latents_path=snakemake.output.latents,
        truncation_psi=snakemake.params.truncation_psi,
        truncation_layers=snakemake.params.truncation_layers,
        batch_size=snakemake.params.batch_size,
        device=snakemake.params.device,
        truth_path=snakemake.output.truth[0] if synthetic else None,
        indices=shard_range(snakemake.params.num_images, snakemake.params.shards, int(snakemake.wildcards.shard)),
    )
