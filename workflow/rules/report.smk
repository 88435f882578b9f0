# The metric files as HTML tables for the Snakemake report (REPORT_TABLES in common.smk).


localrules:
    report_tables,


rule report_tables:
    input:
        **{name: metrics for name, (metrics, _, _) in REPORT_TABLES.items()},
    output:
        **report_table_outputs(),
    benchmark:
        "results/benchmarks/report_tables.tsv"
    log:
        "logs/report_tables.log",
    script:
        "../scripts/report_tables.py"


localrules:
    stage_times,


# Every rule's benchmark file (Snakemake's own: seconds and memory), by rule. Downloads have none: their output may
# be a file the user put there, and a missing benchmark file would make Snakemake fetch it again.
rule stage_times:
    input:
        **benchmark_files(),
    output:
        json="results/benchmarks/stage_times.json",
        html=report(
            "results/report/stage_times.html",
            caption="../report/stage_times.rst",
            category="6. Stage times",
        ),
    params:
        device=config["device"],
        precision=config["precision"],
        workflow_dir=workflow.basedir,
        configfiles=[str(f) for f in workflow.configfiles],
    log:
        "logs/stage_times.log",
    script:
        "../scripts/stage_times.py"
