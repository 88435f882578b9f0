# Stage 6c: the property values steer the generator; only the latent path trains.


rule finetune:
    input:
        generator=generator_checkpoint(),
        regressor="results/models/property_regressor.pth",
        directions="results/directions/directions.pth",
        properties="results/properties.parquet",
        images="results/generated/images",
    output:
        "results/finetuned.pth",
    params:
        precision=config["precision"],
        settings=config["finetune"]["train"],
        amortise=config["finetune"]["amortise"],
        # checkpoints and the training log, beside the model: results/finetune/
        work_dir=lambda wildcards, output: str(Path(output[0]).with_name("finetune")),
        kind=config["generator"]["kind"],
        resolution=config["generator"]["resolution"],
        device=config["device"],
        # what the fine-tuned file records about how it was made
        config={key: config[key] for key in ("generator", "finetune")},
    threads: 2
    resources:
        gpu=1,
    benchmark:
        "results/benchmarks/finetune.tsv"
    log:
        "logs/finetune.log",
    script:
        "../scripts/finetune.py"
