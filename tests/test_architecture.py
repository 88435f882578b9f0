"""The package's shape, read from its code: imports run one way, modules and functions stay small, scripts thin."""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "src" / "vhuman"
# Lowest first. A module may import only modules of a lower layer.
LAYERS = [
    # ground: words, atomic writes, devices, codes, pages, ridge lines
    {"vocabulary", "atomic", "runtime", "latents", "webserver", "ridge"},
    {"io"},  # files on disk: checkpoints, images, tables, rule logs
    # networks, renderer, report pictures, downloads, the IR reader, the judges, the results page, sharded stages
    {
        "synthetic",
        "stylegan",
        "mobilestylegan",
        "bisenet",
        "report",
        "weights",
        "openvino_ir",
        "judges",
        "results_doc",
        "shards",
    },
    {"discriminator", "results_real"},  # StyleGAN's discriminator; the real-face results page
    {"genforce", "mobilestylegan_ir"},  # GenForce's checkpoint files, MobileStyleGAN's IR files
    {"generators"},  # every generator behind one interface
    {
        "generate",
        "labeling",
        "gender",
        "segmentation",
        "properties",
        "regressor",
        "judging",
    },  # stages 1 to 6a; judged control
    # stage 6b; the labelling grid's guesses (from the gender stage's CNN); the stand-in for the person who labels
    {"directions", "label_guesser", "hand_label_stand_in"},
    {"conditional", "layer_probe"},  # the conditional generator and its file; the directions' layers
    {"amortise"},  # stage 6c's second part: the closed loop amortised into the mapping
    {"finetune", "evaluation", "pictures"},  # stages 6c and 7
    {"studio"},  # the live control page of the fine-tuned generator
    {"cli"},  # the commands
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
MAX_SCRIPT_LINES = 60


def layer_of(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i
    raise AssertionError(f"vhuman.{module} is in no layer of tests/test_architecture.py: place it")


def package_imports(path: Path) -> set[str]:
    """The vhuman modules a file imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vhuman":
            if node.module == "vhuman":
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vhuman.")}
    return found


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)
    assert {m for layer in LAYERS for m in layer} == set(MODULES), "a layer names a module that does not exist"


@pytest.mark.parametrize("module", MODULES)
def test_imports_run_downwards_only(module):
    mine = layer_of(module)
    for other in package_imports(PACKAGE / f"{module}.py"):
        assert layer_of(other) < mine, (
            f"vhuman.{module} (layer {mine}) imports vhuman.{other} (layer {layer_of(other)})"
        )


def test_modules_and_functions_stay_small():
    too_long = []
    for path in PACKAGE.glob("*.py"):
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long


def test_rule_scripts_are_thin_and_read_no_package_internals():
    for path in (REPO / "workflow" / "scripts").glob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= MAX_SCRIPT_LINES, f"{path.name} holds logic: move it into the package"
        assert "with logging_to(snakemake.log[0])" in text, f"{path.name} does not log to its rule's log file"
        tree = ast.parse(text)
        defs = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        assert not defs, f"{path.name} defines classes {defs}: they belong in the package"


def test_package_modules_never_read_snakemake_objects():
    for path in PACKAGE.glob("*.py"):
        assert "snakemake." not in path.read_text().replace("`snakemake ", ""), path.name


def test_rule_files_follow_the_dag_and_name_their_stage():
    snakefile = (REPO / "Snakefile").read_text()
    order = [line.split('"')[1] for line in snakefile.splitlines() if line.startswith("include:")]
    assert order == [
        "workflow/rules/common.smk",
        "workflow/rules/models.smk",
        "workflow/rules/generate.smk",
        "workflow/rules/gender.smk",
        "workflow/rules/segmentation.smk",
        "workflow/rules/properties.smk",
        "workflow/rules/regressor.smk",
        "workflow/rules/directions.smk",
        "workflow/rules/finetune.smk",
        "workflow/rules/evaluation.smk",
        "workflow/rules/report.smk",
    ]
    for rule_file in order[2:-1]:
        stage = Path(rule_file).stem
        assert (REPO / rule_file).read_text().startswith("# Stage "), rule_file
        assert (PACKAGE / f"{stage}.py").is_file(), f"{rule_file} has no module vhuman/{stage}.py"
        assert (REPO / "tests" / f"test_{stage}.py").is_file(), f"{rule_file} has no tests/test_{stage}.py"
