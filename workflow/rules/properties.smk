# Stage 5: properties measured from the masks, one row per kept image.


rule properties:
    input:
        subset="results/subset/female.parquet",
        images="results/generated/images",
        masks="results/segmentation/masks",
    output:
        "results/properties.parquet",
    benchmark:
        "results/benchmarks/properties.tsv"
    log:
        "logs/properties.log",
    script:
        "../scripts/properties.py"


rule property_plots:
    input:
        "results/properties.parquet",
    output:
        report(
            "results/properties/histograms.png",
            caption="../report/property_plots.rst",
            category="4. Properties",
        ),
    benchmark:
        "results/benchmarks/property_plots.tsv"
    log:
        "logs/property_plots.log",
    script:
        "../scripts/property_plots.py"


if SYNTHETIC:

    rule properties_truth_check:
        input:
            properties="results/properties.parquet",
            truth="results/generated/truth.parquet",
        output:
            "results/properties/truth_check.json",
        benchmark:
            "results/benchmarks/properties_truth_check.tsv"
        log:
            "logs/properties_truth_check.log",
        script:
            "../scripts/properties_truth_check.py"


if "judges" in config:

    # Real faces have no truth: the properties against dlib's independent readings of the same images.
    rule properties_judge_check:
        input:
            unpack(judge_files),
            properties="results/properties.parquet",
            images="results/generated/images",
        output:
            "results/properties/judge_check.json",
        benchmark:
            "results/benchmarks/properties_judge_check.tsv"
        log:
            "logs/properties_judge_check.log",
        script:
            "../scripts/properties_judge_check.py"
