# Stage 2-3: hand labels of the first images, a k-fold CNN for the rest, and the female subset.

if SYNTHETIC:

    rule simulated_hand_labels:
        input:
            truth="results/generated/truth.parquet",
        output:
            config["labels"]["manual_csv"],
        params:
            first=config["labels"]["num_manual"],
            error_rate=config["labels"]["simulated_error_rate"],
            seed=config["labels"]["seed"],
        benchmark:
            "results/benchmarks/simulated_hand_labels.tsv"
        log:
            "logs/simulated_hand_labels.log",
        script:
            "../scripts/simulated_hand_labels.py"

elif config["labels"].get("stand_in"):

    rule stand_in_hand_labels:
        input:
            images="results/generated/images",
            latents="results/generated/latents.parquet",
        output:
            config["labels"]["manual_csv"],
        params:
            first=config["labels"]["num_manual"],
        benchmark:
            "results/benchmarks/stand_in_hand_labels.tsv"
        log:
            "logs/stand_in_hand_labels.log",
        script:
            "../scripts/stand_in_hand_labels.py"


rule gender_cnn:
    input:
        images="results/generated/images",
        latents="results/generated/latents.parquet",
        manual=manual_labels,
    output:
        model="results/gender/cnn.pth",
        labels="results/gender/labels.parquet",
        metrics="results/gender/metrics.json",
    params:
        precision=config["precision"],
        settings=config["gender_cnn"],
        hand_label_error_rate=config["labels"]["hand_label_error_rate"],
    threads: 2
    resources:
        gpu=1,
    benchmark:
        "results/benchmarks/gender_cnn.tsv"
    log:
        "logs/gender_cnn.log",
    script:
        "../scripts/gender_cnn.py"


rule female_subset:
    input:
        labels="results/gender/labels.parquet",
    output:
        subset="results/subset/female.parquet",
        summary="results/subset/summary.json",
    params:
        min_p_female=config["subset"]["min_p_female"],
        min_p_good_quality=config["subset"]["min_p_good_quality"],
    benchmark:
        "results/benchmarks/female_subset.tsv"
    log:
        "logs/female_subset.log",
    script:
        "../scripts/female_subset.py"


if SYNTHETIC:

    rule gender_truth_check:
        input:
            labels="results/gender/labels.parquet",
            subset="results/subset/female.parquet",
            truth="results/generated/truth.parquet",
        output:
            "results/gender/truth_check.json",
        benchmark:
            "results/benchmarks/gender_truth_check.tsv"
        log:
            "logs/gender_truth_check.log",
        script:
            "../scripts/gender_truth_check.py"
