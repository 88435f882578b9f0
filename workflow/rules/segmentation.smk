# Stage 4: a face parser writes one mask per kept image (palette PNG, 19 CelebAMask-HQ classes).

if SYNTHETIC:

    rule world_parser:
        output:
            model=config["segmentation"]["checkpoint"],
            metrics="results/segmentation/parser_metrics.json",
        params:
            precision=config["precision"],
            settings=config["segmentation"]["world_parser"],
            mask_resolution=config["segmentation"]["mask_resolution"],
        threads: 2
        resources:
            gpu=1,
        benchmark:
            "results/benchmarks/world_parser.tsv"
        log:
            "logs/world_parser.log",
        script:
            "../scripts/world_parser.py"

else:

    # Compute nodes of a cluster often have no internet: downloads run beside the scheduler.
    localrules:
        download_bisenet,

    rule download_bisenet:
        output:
            config["segmentation"]["checkpoint"],
        params:
            url=config["segmentation"]["url"],
            sha256=config["segmentation"]["sha256"],
            archive=config["segmentation"]["package_archive"],
        log:
            "logs/download_bisenet.log",
        script:
            "../scripts/download.py"


SEGMENT_SHARDS = list(range(config["segmentation"]["shards"]))


# One shard of the kept images (consecutive rows of the subset); `segment` joins the shards' masks.
rule segment_shard:
    input:
        subset="results/subset/female.parquet",
        images="results/generated/images",
        parser=config["segmentation"]["checkpoint"],
    output:
        masks=temp(directory("results/segmentation/shards/{shard}/masks")),
    wildcard_constraints:
        shard=r"\d+",
    params:
        precision=config["precision"],
        kind="world" if SYNTHETIC else "bisenet",
        sha256=config["segmentation"].get("sha256", ""),
        mask_resolution=config["segmentation"]["mask_resolution"],
        batch_size=config["segmentation"]["batch_size"],
        shards=config["segmentation"]["shards"],
        device=config["device"],
    threads: 2
    resources:
        gpu=1,
    benchmark:
        "results/benchmarks/segment_shard/{shard}.tsv"
    log:
        "logs/segment_shard/{shard}.log",
    script:
        "../scripts/segment.py"


rule segment:
    input:
        masks=expand("results/segmentation/shards/{shard}/masks", shard=SEGMENT_SHARDS),
    output:
        masks=directory("results/segmentation/masks"),
    benchmark:
        "results/benchmarks/segment.tsv"
    log:
        "logs/segment.log",
    script:
        "../scripts/gather_shards.py"


rule mask_examples:
    input:
        subset="results/subset/female.parquet",
        images="results/generated/images",
        masks="results/segmentation/masks",
    output:
        report(
            "results/segmentation/examples.png",
            caption="../report/mask_examples.rst",
            category="3. Segmentation",
        ),
    benchmark:
        "results/benchmarks/mask_examples.tsv"
    log:
        "logs/mask_examples.log",
    script:
        "../scripts/mask_examples.py"


if SYNTHETIC:

    # The kept images' true label maps are drawn here from their codes, not stored for all generated images.
    rule parser_truth_check:
        input:
            subset="results/subset/female.parquet",
            masks="results/segmentation/masks",
            latents="results/generated/latents.parquet",
            checkpoint=generator_checkpoint(),
        output:
            "results/segmentation/truth_check.json",
        params:
            kind=config["generator"]["kind"],
            resolution=config["generator"]["resolution"],
        threads: 2  # the renderer, on the CPU
        benchmark:
            "results/benchmarks/parser_truth_check.tsv"
        log:
            "logs/parser_truth_check.log",
        script:
            "../scripts/parser_truth_check.py"
