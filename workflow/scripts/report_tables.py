import json

from vhuman.io import atomic_path, logging_to
from vhuman.report import control_table_html, metrics_table_html

with logging_to(snakemake.log[0]):
    for name, html_path in snakemake.output.items():
        data = json.loads(open(snakemake.input[name]).read())
        page = control_table_html(data) if name == "control" else metrics_table_html(data, name.replace("_", " "))
        with atomic_path(html_path) as tmp:
            tmp.write_text(page)
