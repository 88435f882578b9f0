# Stage 6a: the property regressor, a frozen critic that reads the properties off an image; the layer probe
# (directions) and the fine-tune both read faces with it.


rule property_regressor:
    input:
        images="results/generated/images",
        properties="results/properties.parquet",
        labels="results/gender/labels.parquet",
    output:
        model="results/models/property_regressor.pth",
        metrics="results/finetune/regressor_metrics.json",
    params:
        precision=config["precision"],
        settings=config["finetune"]["regressor"],
    threads: 2
    resources:
        gpu=1,
    benchmark:
        "results/benchmarks/property_regressor.tsv"
    log:
        "logs/property_regressor.log",
    script:
        "../scripts/property_regressor.py"
