from vhuman.io import atomic_path, logging_to, write_json
from vhuman.report import metrics_table_html, run_origin, stage_times
from vhuman.runtime import pick_device, precision_name

with logging_to(snakemake.log[0]):
    precision = precision_name(pick_device(snakemake.params.device), snakemake.params.precision)
    origin = run_origin(snakemake.params.workflow_dir, snakemake.params.configfiles)
    times = stage_times(dict(snakemake.input.items()), precision, origin)
    write_json(times, snakemake.output.json)
    with atomic_path(snakemake.output.html) as tmp:
        tmp.write_text(metrics_table_html(times, "stage times of the last run"))
    print(f"stage times: {times['total_seconds'] / 60:.1f} minutes in all", flush=True)
