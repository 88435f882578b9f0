# Stage 7: controlled generation and the evaluation of the fine-tuned generator against the directions baseline.


rule controlled_pictures:
    input:
        finetuned="results/finetuned.pth",
        directions="results/directions/directions.pth",
        properties="results/properties.parquet",
    output:
        sweeps=report(
            directory("results/evaluation/sweeps"),
            patterns=["{name}.png"],
            caption="../report/sweeps.rst",
            category="5. Control",
        ),
        animations=report(
            directory("results/evaluation/animations"),
            patterns=["{name}.html"],
            caption="../report/animations.rst",
            category="5. Control",
        ),
    params:
        precision=config["precision"],
        seeds=config["evaluation"]["picture_seeds"],
        sweep_percentiles=config["evaluation"]["sweep_percentiles"],
    benchmark:
        "results/benchmarks/controlled_pictures.tsv"
    log:
        "logs/controlled_pictures.log",
    script:
        "../scripts/controlled_pictures.py"


rule evaluate_control:
    input:
        unpack(judge_files),
        finetuned="results/finetuned.pth",
        directions="results/directions/directions.pth",
        properties="results/properties.parquet",
        subset="results/subset/female.parquet",
        images="results/generated/images",
        parser=config["segmentation"]["checkpoint"],
        gender_cnn="results/gender/cnn.pth",
    output:
        "results/evaluation/control.json",
    params:
        precision=config["precision"],
        settings=config["evaluation"],
        parser_kind="world" if SYNTHETIC else "bisenet",
        mask_resolution=config["segmentation"]["mask_resolution"],
        gender_input_size=config["gender_cnn"]["input_size"],
        with_truth=SYNTHETIC,
        device=config["device"],
    threads: 2
    resources:
        gpu=1,
    benchmark:
        "results/benchmarks/evaluate_control.tsv"
    log:
        "logs/evaluate_control.log",
    script:
        "../scripts/evaluate_control.py"
