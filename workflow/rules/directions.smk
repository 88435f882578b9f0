# Stage 6b: latent directions in W, fitted on the property table, and the layers each one acts through. They are
# the baseline of the evaluation and the fine-tune's starting edit.


rule latent_directions:
    input:
        generator=generator_checkpoint(),
        latents="results/generated/latents.parquet",
        properties="results/properties.parquet",
        labels="results/gender/labels.parquet",
        regressor="results/models/property_regressor.pth",
    output:
        directions="results/directions/directions.pth",
        layers="results/directions/layers.json",
    params:
        precision=config["precision"],
        kind=config["generator"]["kind"],
        resolution=config["generator"]["resolution"],
        device=config["device"],
        layer_probe_images=config["directions"]["layer_probe_images"],
    threads: 2
    resources:
        gpu=1,
    benchmark:
        "results/benchmarks/latent_directions.tsv"
    log:
        "logs/latent_directions.log",
    script:
        "../scripts/latent_directions.py"
