# The metric files as HTML tables for the Snakemake report (REPORT_TABLES in common.smk).


localrules:
    report_tables,


rule report_tables:
    input:
        **{name: metrics for name, (metrics, _, _) in REPORT_TABLES.items()},
    output:
        **report_table_outputs(),
    log:
        "logs/report_tables.log",
    script:
        "../scripts/report_tables.py"
