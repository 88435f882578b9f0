# Stage 1: N images from the original generator, with every image's seed, z and w.


rule generate:
    input:
        checkpoint=generator_checkpoint(),
    output:
        images=directory("results/generated/images"),
        latents="results/generated/latents.parquet",
        truth=(["results/generated/truth.parquet"] if SYNTHETIC else []),
        truth_masks=([directory("results/generated/truth_masks")] if SYNTHETIC else []),
    params:
        kind=config["generator"]["kind"],
        resolution=config["generator"]["resolution"],
        sha256=config["generator"].get("sha256", ""),
        num_images=config["generate"]["num_images"],
        seed=config["generate"]["seed"],
        batch_size=config["generate"]["batch_size"],
        truncation_psi=config["generator"]["truncation_psi"],
        truncation_layers=config["generator"]["truncation_layers"],
        device=config["device"],
        mask_resolution=config["segmentation"]["mask_resolution"],
    threads: 2
    resources:
        gpu=1,
    benchmark:
        "results/benchmarks/generate.tsv"
    log:
        "logs/generate.log",
    script:
        "../scripts/generate.py"


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
