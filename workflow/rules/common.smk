# Helpers the rules ask (input functions, settings) and wildcard constraints. Logic lives in snaketune.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from snaketune.config import (  # noqa: E402
    TINY_BASE_DIR,
    check_config,
    check_inputs,
    fill_stage_defaults,
    load_schema,
    specialist_settings as _specialist_settings,
)

CONFIG_SCHEMA = str(Path(workflow.basedir) / "config" / "schemas" / "config.schema.yaml")
# Name the file the user edits in error messages (the last --configfile wins over config/config.yaml).
CONFIG_PATH = str((list(workflow.overwrite_configfiles or []) or ["config/config.yaml"])[-1])
_schema = load_schema(CONFIG_SCHEMA)
check_config(config, _schema, CONFIG_PATH)
validate(config, CONFIG_SCHEMA)
fill_stage_defaults(config, _schema)
check_inputs(config, CONFIG_PATH)

SPECIALISTS = sorted(config["specialists"])

# Each stage's .smk appends the outputs `rule all` should build.
ALL_TARGETS = []


wildcard_constraints:
    specialist="|".join(SPECIALISTS),
    quant="f32|f16|q8_0",


def specialist_settings(name):
    """The specialist's settings over config['defaults'] (deep merge)."""
    return _specialist_settings(config, name)


def specialist_resources(name):
    return specialist_settings(name)["resources"]


def data_sources():
    """Raw JSONL files the data stage reads: the demo file (when enabled) and the configured ones."""
    paths = [source["path"] for source in config["data"]["sources"]]
    if config["data"]["demo"]["enabled"]:
        paths.insert(0, "results/data/raw/demo.jsonl")
    return paths


def source_formats():
    formats = {source["path"]: source.get("format", "auto") for source in config["data"]["sources"]}
    if config["data"]["demo"]["enabled"]:
        formats["results/data/raw/demo.jsonl"] = "chat"
    return formats


def uses_tiny_base():
    return config["base_model"]["name_or_path"].rstrip("/") == TINY_BASE_DIR


def base_model_input(wildcards=None):
    """The base model as a file input: the tiny base or a local directory; a hub id has none."""
    name = config["base_model"]["name_or_path"]
    if uses_tiny_base() or Path(name).is_dir():
        return name
    return []


def specialist_focus_tools():
    """{specialist: focus tools}, for the data stage's coverage checks."""
    return {name: list(config["specialists"][name].get("focus_tools") or []) for name in SPECIALISTS}
