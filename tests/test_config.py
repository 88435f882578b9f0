"""One source of defaults: config/config.yaml, checked against its schema, the real config, the settings classes
and config/README.md."""

import dataclasses
import re

import jsonschema
import pytest
import yaml

from tests.conftest import REPO, default_config
from vhuman.amortise import AmortiseSettings
from vhuman.finetune import FinetuneSettings
from vhuman.gender import ClassifierSettings
from vhuman.regressor import RegressorSettings
from vhuman.segmentation import ParserSettings

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
REAL = yaml.safe_load((REPO / "config" / "stylegan_celeba_partial256.yaml").read_text())
MOBILE = yaml.safe_load((REPO / "config" / "mobilestylegan_ffhq.yaml").read_text())
MOBILE_2CORES = yaml.safe_load((REPO / "config" / "mobilestylegan_ffhq_2cores.yaml").read_text())
# Real configurations only: where real weights come from (required there by the schema's if/then), the independent
# judges and the unattended hand-label stand-in.
REAL_ONLY = {
    "judges",
    "labels.stand_in",
    "generator.url",
    "generator.sha256",
    "generator.package_archive",
    "segmentation.url",
    "segmentation.sha256",
    "segmentation.package_archive",
}


def real_only_children(path: str, obj: dict) -> set[str]:
    return {key for key in obj["properties"] if f"{path}.{key}".lstrip(".") in REAL_ONLY}


def objects(schema: dict, path: str = ""):
    """Every object schema with its dotted path."""
    if schema.get("type") == "object" and "properties" in schema:
        yield path, schema
        for key, sub in schema["properties"].items():
            yield from objects(sub, f"{path}.{key}".lstrip("."))


def leaves(config: dict, path: str = ""):
    for key, value in config.items():
        dotted = f"{path}.{key}".lstrip(".")
        if isinstance(value, dict) and key != "members":  # members: file -> hash, data rather than keys
            yield from leaves(value, dotted)
        else:
            yield dotted


def merged(base: dict, over: dict) -> dict:
    """Snakemake's merge of --configfile over the Snakefile's config/config.yaml."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def section(config: dict, path: str):
    for part in filter(None, path.split(".")):
        config = config[part]
    return config


def test_the_schema_holds_no_defaults_and_requires_every_key():
    assert "default" not in (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()
    for path, obj in objects(SCHEMA):
        assert set(obj.get("required", [])) == set(obj["properties"]) - real_only_children(path, obj), path
        assert obj.get("additionalProperties") is False, f"{path or 'top level'} accepts unknown keys"


def test_the_default_config_has_exactly_the_schema_keys():
    config = default_config()
    for path, obj in objects(SCHEMA):
        if any(path == real or path.startswith(real + ".") for real in REAL_ONLY):
            continue
        values = section(config, path)
        assert set(values) == set(obj["properties"]) - real_only_children(path, obj), path


@pytest.mark.parametrize("name", ["default", "real", "mobile", "mobile_2cores"])
def test_every_config_validates(name):
    config = {
        "default": default_config,
        "real": lambda: merged(default_config(), REAL),
        "mobile": lambda: merged(default_config(), MOBILE),
        "mobile_2cores": lambda: merged(merged(default_config(), MOBILE), MOBILE_2CORES),
    }[name]()
    jsonschema.validate(config, SCHEMA)
    kind = {"default": "synthetic", "real": "genforce"}.get(name, "mobilestylegan")
    assert config["generator"]["kind"] == kind
    if name != "default":
        assert config["generator"]["resolution"] == 256


def test_a_real_config_without_its_downloads_is_refused():
    for real in (REAL, MOBILE):
        config = merged(default_config(), real)
        del config["segmentation"]["package_archive"]
        with pytest.raises(jsonschema.ValidationError, match="package_archive"):
            jsonschema.validate(config, SCHEMA)
    config = merged(default_config(), MOBILE)
    del config["generator"]["package_archive"]
    with pytest.raises(jsonschema.ValidationError, match="package_archive"):
        jsonschema.validate(config, SCHEMA)


@pytest.mark.parametrize(
    "cls, path",
    [
        (FinetuneSettings, "finetune.train"),
        (AmortiseSettings, "finetune.amortise"),
        (RegressorSettings, "finetune.regressor"),
        (ClassifierSettings, "gender_cnn"),
        (ParserSettings, "segmentation.world_parser"),
    ],
)
def test_settings_classes_take_their_section_and_hold_no_defaults(cls, path):
    fields = dataclasses.fields(cls)
    assert {f.name for f in fields} == set(section(default_config(), path))
    assert all(f.default is dataclasses.MISSING for f in fields), f"{cls.__name__} has a competing default"
    cls(**section(default_config(), path))


def test_config_readme_documents_every_key():
    readme = (REPO / "config" / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    for key in set(leaves(default_config())) | set(leaves(REAL)) | set(leaves(MOBILE)):
        head, _, leaf = key.rpartition(".")
        documented = any(
            f"`{key}`" in row or (f"`{head}." in row and re.search(rf"\b{leaf}\b", row)) or f"`{head}.*`" in row
            for row in rows
        )
        assert documented, f"config/README.md does not document {key}"
