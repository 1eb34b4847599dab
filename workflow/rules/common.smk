# Helpers the rules ask (input functions, params, resources), the final targets and wildcard constraints.
# The policy behind them lives in the snaketune package (config, targets).
import glob
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from snaketune.config import (  # noqa: E402
    TINY_BASE_DIR,
    benchmark_eval_params as _benchmark_eval_params,
    benchmark_settings as _benchmark_settings,
    check_config,
    check_inputs,
    display_path,
    eval_params as _eval_params,
    eval_settings,
    fill_stage_defaults,
    layered_config,
    load_schema,
    resolve_base_model,
    specialist_settings as _specialist_settings,
)
from snaketune.gguf_base import PYPI_BASES, conversion_mem_mb  # noqa: E402
from snaketune.targets import base_gguf_path, final_targets as _final_targets  # noqa: E402
from snaketune.targets import lora_base_quant, modelfile_quant  # noqa: E402
from snaketune.tracking import without_tracking  # noqa: E402

CONFIG_SCHEMA = str(Path(workflow.basedir) / "config" / "schemas" / "config.schema.yaml")
# Config layering: Snakemake deep-merges --configfile into the `configfile:` default, but a user's file that
# names `specialists` or `data.sources` replaces the default's. Rebuild the config from the same files (then
# the --config values), remembering which file set each key so that errors name it.
_user_files = [str(path) for path in workflow.overwrite_configfiles or []]
_default_file = next((str(p) for p in workflow.configfiles if str(p) not in _user_files), None)
CONFIG_LAYERS = layered_config(
    None if workflow.config_settings.replace_workflow_config else _default_file,
    _user_files,
    workflow.config_settings.config,
)
config.clear()
config.update(CONFIG_LAYERS.config)
# The file that names the specialists, for errors the run itself finds about their settings (a param of rules;
# an overlay that only changes, say, defaults.train.lr keeps it, so it reruns only what the value changes);
# checks before the run name the exact file each key came from (CONFIG_LAYERS).
CONFIG_PATH = display_path(CONFIG_LAYERS.file_of("specialists") or "config/config.yaml")
_schema = load_schema(CONFIG_SCHEMA)
check_config(config, _schema, CONFIG_LAYERS)
validate(config, CONFIG_SCHEMA)
fill_stage_defaults(config, _schema)
# A GGUF base (base_model.gguf_file / pypi_gguf) becomes the directory that gguf_base converts it into; from
# here on every rule sees base_model.name_or_path as that local directory.
config["base_model"] = resolve_base_model(config["base_model"], CONFIG_LAYERS.file_of("base_model"))
check_inputs(config, CONFIG_LAYERS)

SPECIALISTS = sorted(config["specialists"])
# Where every step writes its provenance record, and the committed locks a record names (a param of each rule).
PROVENANCE = {"records": "results/provenance", "locks": "envs/lock"}


wildcard_constraints:
    specialist="|".join(SPECIALISTS),
    quant="f32|f16|q8_0",


def final_targets():
    """Every result `rule all` builds; the audit checks the same list."""
    return _final_targets(config)


# ---- environment


def env_files():
    """Every env file in envs/: the lock merges them all."""
    return sorted(glob.glob("envs/*.yaml"))


def user_data_paths():
    """The data files the config names (not the demo, which the pipeline writes itself)."""
    return [source["path"] for source in config["data"]["sources"]]


def verify_gpus():
    """verify holds a GPU only when it must find one."""
    return 1 if config["verify"]["require_gpu"] else 0


# ---- data


def data_sources():
    """Raw files the data stage reads: the demo file (when enabled), the configured ones and BFCL answers."""
    specs = data_source_specs()
    return [spec["path"] for spec in specs] + [spec["answers"] for spec in specs if spec.get("answers")]


def data_source_specs():
    """data.sources as the data stage reads them (path, format, options, answers, split), demo first."""
    specs = [dict(source) for source in config["data"]["sources"]]
    if config["data"]["demo"]["enabled"]:
        specs.insert(0, {"path": "results/data/raw/demo.jsonl", "format": "chat"})
    return specs


def data_config_files():
    """The file each config key the data stage names in its errors came from."""
    return CONFIG_LAYERS.files_of("specialists", "data.split")


def specialist_focus_tools():
    """{specialist: focus tools}, for the data stage's coverage checks."""
    return {name: list(config["specialists"][name].get("focus_tools") or []) for name in SPECIALISTS}


# ---- base model and specialists


def uses_tiny_base():
    return config["base_model"]["name_or_path"].rstrip("/") == TINY_BASE_DIR


def uses_gguf_base():
    return bool(config["base_model"].get("gguf_file"))


def base_model_input(wildcards=None):
    """The base model as a file input: the tiny base, a converted GGUF base or a local directory; a hub id
    has none."""
    name = config["base_model"]["name_or_path"]
    if uses_tiny_base() or uses_gguf_base() or Path(name).is_dir():
        return name
    return []


def gguf_base_source(wildcards):
    """The GGUF that gguf_base converts (an input, so its sha256 is in the provenance record)."""
    return config["base_model"]["gguf_file"]


def gguf_base_mem_mb(wildcards):
    return conversion_mem_mb(config["base_model"]["gguf_file"])


def pypi_gguf_name(wildcards):
    """The PyPI_BASES entry whose GGUF file is {file}."""
    return next(name for name, spec in PYPI_BASES.items() if spec["file"] == wildcards.file)


def gguf_base_stem():
    """The one converted base directory name rule gguf_base may make (none without a GGUF base)."""
    if not uses_gguf_base():
        return "(?!)"
    return re.escape(Path(config["base_model"]["name_or_path"]).name)


def specialist_settings(name):
    """The specialist's settings over config['defaults'] (deep merge)."""
    return _specialist_settings(config, name)


def specialist_resources(name):
    return specialist_settings(name)["resources"]


def specialist_spec(wildcards):
    """The specialist's merged settings, as train and parity get them; without train.report_to, which
    observes a run and changes no result (the entry scripts read it from the config: toggling it reruns
    nothing)."""
    return without_tracking(specialist_settings(wildcards.specialist))


def specialist_system_prompt(wildcards):
    return specialist_settings(wildcards.specialist)["system_prompt"]


def specialist_threads(wildcards):
    return specialist_resources(wildcards.specialist)["threads"]


def specialist_gpus(wildcards):
    return specialist_resources(wildcards.specialist)["gpus"]


def specialist_mem_mb(wildcards):
    return specialist_resources(wildcards.specialist)["mem_mb"]


def deepspeed_config(wildcards):
    """The specialist's DeepSpeed config file, an input so that editing it retrains; none when unset."""
    return specialist_settings(wildcards.specialist)["train"].get("deepspeed") or []


# ---- eval


def eval_spec(wildcards):
    """What eval uses of the specialist (snaketune.config.eval_settings)."""
    return eval_settings(config, wildcards.specialist)


def eval_gpus(wildcards):
    """Eval decodes on one device at most."""
    return min(specialist_gpus(wildcards), 1)


# ---- export: which GGUFs, and what parity compares

EXPORT = config["export"]
EXPORT_QUANTS = list(EXPORT["quants"])
LORA_BASE_QUANT = lora_base_quant(EXPORT_QUANTS)
MODELFILE_QUANT = modelfile_quant(EXPORT_QUANTS)
BASE_GGUF = base_gguf_path(EXPORT_QUANTS)


def gguf_source(wildcards, input):
    """The merged model the GGUF is converted from (its input, so a remote file system finds it)."""
    return input.model


def parity_inputs(wildcards):
    """The merged model, every configured GGUF, and the base GGUF + LoRA GGUF when LoRA export is on."""
    inputs = {
        "merged": f"results/merged/{wildcards.specialist}",
        "test": "results/data/test.jsonl",
        "ggufs": expand(
            "results/gguf/{specialist}.{quant}.gguf", specialist=wildcards.specialist, quant=EXPORT_QUANTS
        ),
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
    for path, record in read_records(PROVENANCE["records"]):
        try:
            producer = workflow.get_rule(record["rule"])
            wildcards_ = Wildcards(fromdict=record.get("wildcards", {}))
            params, _ = producer.expand_params(wildcards_, InputFiles(), OutputFiles(), None)
            expected[str(path)] = {"params": normalised(params)}
        except Exception as err:  # a rule or specialist the workflow no longer has
            expected[str(path)] = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:300]}
    return expected


def audit_strict():
    """Snakemake's --config reads audit_strict=false as the string "false"."""
    return config["audit_strict"] in (True, "true")


# ---- benchmarks (BFCL categories as eval targets; off while eval.benchmarks is empty)

from snaketune.bfcl import BFCL_VERSION, BFCL_WHEEL_SHA256  # noqa: E402
from snaketune.evaluation import check_scoring_targets  # noqa: E402

check_scoring_targets(config["eval"], CONFIG_PATH)  # an ast_accuracy target needs eval.scoring: bfcl

BENCHMARKS = list(config["eval"]["benchmarks"])
BFCL_WHEEL = f"results/benchmarks/bfcl_eval-{BFCL_VERSION}-py3-none-any.whl"


def eval_params():
    """config['eval'] as the test-set eval rules take it (without the benchmark stage's keys)."""
    return _eval_params(config)


def benchmark_eval_params():
    """What benchmark scoring takes of config['eval']: decoding only (scoring is always bfcl there)."""
    return _benchmark_eval_params(config)


def benchmark_settings(wildcards):
    return _benchmark_settings(config, wildcards.specialist)


def benchmark_results(wildcards=None):
    """results/eval/benchmarks/{specialist}.json of every specialist ([] while no benchmark is configured)."""
    return expand("results/eval/benchmarks/{specialist}.json", specialist=SPECIALISTS) if BENCHMARKS else []
