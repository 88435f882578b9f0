# Stage 1: N images from the original generator, with every image's seed, z and w.


GENERATE_SHARDS = list(range(config["generate"]["shards"]))


# One shard of the images: a stopped run loses at most the shard in progress, and a cluster draws shards side by
# side. The shards are temporary: `generate` joins them into the stage's outputs.
rule generate_shard:
    input:
        checkpoint=generator_checkpoint(),
    output:
        images=temp(directory("results/generated/shards/{shard}/images")),
        latents=temp("results/generated/shards/{shard}/latents.parquet"),
        truth=(temp(["results/generated/shards/{shard}/truth.parquet"]) if SYNTHETIC else []),
    wildcard_constraints:
        shard=r"\d+",
    params:
        kind=config["generator"]["kind"],
        resolution=config["generator"]["resolution"],
        sha256=config["generator"].get("sha256", ""),
        num_images=config["generate"]["num_images"],
        shards=config["generate"]["shards"],
        seed=config["generate"]["seed"],
        batch_size=config["generate"]["batch_size"],
        truncation_psi=config["generator"]["truncation_psi"],
        truncation_layers=config["generator"]["truncation_layers"],
        device=config["device"],
    threads: 2
    resources:
        gpu=1,
    benchmark:
        "results/benchmarks/generate_shard/{shard}.tsv"
    log:
        "logs/generate_shard/{shard}.log",
    script:
        "../scripts/generate.py"


rule generate:
    input:
        images=expand("results/generated/shards/{shard}/images", shard=GENERATE_SHARDS),
        latents=expand("results/generated/shards/{shard}/latents.parquet", shard=GENERATE_SHARDS),
        truth=expand("results/generated/shards/{shard}/truth.parquet", shard=GENERATE_SHARDS) if SYNTHETIC else [],
    output:
        images=directory("results/generated/images"),
        latents="results/generated/latents.parquet",
        truth=(["results/generated/truth.parquet"] if SYNTHETIC else []),
    benchmark:
        "results/benchmarks/generate.tsv"
    log:
        "logs/generate.log",
    script:
        "../scripts/gather_shards.py"


rule generated_grid:
    input:
        latents="results/generated/latents.parquet",
        images="results/generated/images",
    output:
        report(
            "results/generated/grid.png",
            caption="../report/generated_grid.rst",
            category="1. Generated faces",
        ),
    params:
        rows=config["report"]["grid_rows"],
        cols=config["report"]["grid_cols"],
    benchmark:
        "results/benchmarks/generated_grid.tsv"
    log:
        "logs/generated_grid.log",
    script:
        "../scripts/image_grid.py"
