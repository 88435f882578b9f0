# The metric files as HTML tables for the Snakemake report (a JSON file would only be a download there).

# Table name -> (metric file, caption, report category).
REPORT_TABLES = {
    "gender_metrics": ("results/gender/metrics.json", "gender_metrics.rst", "2. Gender labels"),
    "female_subset": ("results/subset/summary.json", "female_subset.rst", "2. Gender labels"),
    "control": ("results/evaluation/control.json", "control.rst", "5. Control"),
}
if SYNTHETIC:
    REPORT_TABLES.update(
        {
            "parser_metrics": (
                "results/segmentation/parser_metrics.json",
                "parser_metrics.rst",
                "3. Segmentation",
            ),
            "gender_truth_check": (
                "results/gender/truth_check.json",
                "gender_truth_check.rst",
                "2. Gender labels",
            ),
            "parser_truth_check": (
                "results/segmentation/truth_check.json",
                "parser_truth_check.rst",
                "3. Segmentation",
            ),
            "properties_truth_check": (
                "results/properties/truth_check.json",
                "properties_truth_check.rst",
                "4. Properties",
            ),
        }
    )


def report_table_outputs():
    return {
        name: report(f"results/report/{name}.html", caption=f"../report/{caption}", category=category)
        for name, (_, caption, category) in REPORT_TABLES.items()
    }


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
