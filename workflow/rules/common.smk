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
from snaketune.chat_template import prompt_tools_rendered  # noqa: E402

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


def eval_settings(name):
    """What eval uses of a specialist: editing its training settings must not rerun its base eval,
    except how prompts show the tools, which both evals render as training did, and the device."""
    settings = specialist_settings(name)
    return {**{key: settings[key] for key in ("name", "system_prompt", "focus_tools")},
            "train": {"tools_rendered": prompt_tools_rendered(settings)},
            "resources": {"device": settings["resources"]["device"]}}


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


# ---- export: which GGUFs, and what parity compares

EXPORT = config["export"]
EXPORT_QUANTS = list(EXPORT["quants"])
# The base GGUF that LoRA GGUFs apply to: the most precise configured type (parity holds it to that type's limits).
LORA_BASE_QUANT = next(q for q in ("f32", "f16", "q8_0") if q in EXPORT_QUANTS)
# Ollama runs the q8_0 file when there is one, else the most compact configured type.
MODELFILE_QUANT = next(q for q in ("q8_0", "f16", "f32") if q in EXPORT_QUANTS)
BASE_GGUF = f"results/gguf/base/base.{LORA_BASE_QUANT}.gguf"


def export_settings(wildcards):
    return specialist_settings(wildcards.specialist)


def export_system_prompt(wildcards):
    return export_settings(wildcards)["system_prompt"]


def export_resources(wildcards):
    return specialist_resources(wildcards.specialist)


def export_threads(wildcards):
    return export_resources(wildcards)["threads"]


def merge_gpus(wildcards):
    return export_resources(wildcards)["gpus"]


def export_mem_mb(wildcards):
    return export_resources(wildcards)["mem_mb"]


def parity_inputs(wildcards):
    """The merged model, every configured GGUF, and the base GGUF + LoRA GGUF when LoRA export is on."""
    inputs = {
        "merged": f"results/merged/{wildcards.specialist}",
        "test": "results/data/test.jsonl",
        "ggufs": expand("results/gguf/{specialist}.{quant}.gguf", specialist=wildcards.specialist,
                        quant=EXPORT_QUANTS),
    }
    if EXPORT["lora_gguf"]:
        inputs["lora"] = f"results/gguf/{wildcards.specialist}.lora.gguf"
        inputs["base_gguf"] = BASE_GGUF
    return inputs


# ---- audit


def audit_expected_params(wildcards=None):
    """{record path: {"params": the rule's params as the config gives them now} or {"error": why not}}.

    Evaluated only when the audit job is built: the same expansion Snakemake gives a job, for the rule
    and wildcards each provenance record names.
    """
    from snakemake.iocontainers import InputFiles, OutputFiles, Wildcards

    from snaketune.provenance import normalised, read_records

    expected = {}
    for path, record in read_records():
        try:
            producer = workflow.get_rule(record["rule"])
            wildcards_ = Wildcards(fromdict=record.get("wildcards", {}))
            params, _ = producer.expand_params(wildcards_, InputFiles(), OutputFiles(), None)
            expected[str(path)] = {"params": normalised(params)}
        except Exception as err:  # a rule or specialist the workflow no longer has
            expected[str(path)] = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:300]}
    return expected
