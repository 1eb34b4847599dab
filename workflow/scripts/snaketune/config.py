"""Config questions the rules ask: checks beyond the schema, and each specialist's merged settings."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path

import yaml

from .errors import SnaketuneError, field_path

__all__ = [
    "TINY_BASE_DIR", "load_schema", "check_config", "deep_merge", "fill_stage_defaults",
    "specialist_settings", "eval_settings", "check_inputs", "eval_params", "benchmark_eval_params",
    "benchmark_settings", "BENCHMARK_ONLY_EVAL_KEYS",
]

SPECIALIST_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
TINY_BASE_DIR = "results/base/tiny"


def load_schema(path) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if ref and ref.startswith("#/"):
        target = schema
        for part in ref[2:].split("/"):
            target = target[part]
        merged = dict(target)
        merged.update({k: v for k, v in node.items() if k != "$ref"})
        return merged
    return node


def unknown_keys(config, schema: dict, node: dict | None = None, prefix: str = ""):
    """Yield (key path, suggestion) for every key the schema does not know (misspellings)."""
    node = _resolve(schema, schema if node is None else node)
    if not isinstance(config, dict) or node.get("type") not in ("object", None):
        return
    props = node.get("properties", {})
    extra = node.get("additionalProperties", True)
    for key, value in config.items():
        path = f"{prefix}{key}"
        if key in props:
            yield from unknown_keys(value, schema, props[key], path + ".")
        elif isinstance(extra, dict):
            yield from unknown_keys(value, schema, extra, path + ".")
        elif extra is False:
            close = difflib.get_close_matches(str(key), list(props), n=1)
            yield path, (close[0] if close else None)


def schema_errors(config: dict, schema: dict, config_path: str) -> None:
    """Type / range / enum errors as one line naming the key (Snakemake's own message is a dump)."""
    import jsonschema

    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if err is None:
        return
    key = field_path(err.absolute_path) or "<top level>"
    if err.validator == "enum":
        fix = f"use one of: {', '.join(map(str, err.validator_value))}"
    elif err.validator == "type":
        fix = f"give it a value of type {err.validator_value}"
    elif err.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
        fix = f"{err.validator} is {err.validator_value} (config/README.md)"
    else:
        fix = "see config/README.md for the key's format"
    problem = err.message if len(err.message) < 200 else err.message[:197] + "..."
    raise SnaketuneError(config_path, problem, field=key, fix=fix)


def check_config(config: dict, schema: dict, config_path: str) -> None:
    """Checks with messages a user can act on, run before Snakemake's validate()."""
    for key, suggestion in unknown_keys(config, schema):
        fix = (f"did you mean '{suggestion}'?" if suggestion
               else "remove it (config/README.md lists every key)")
        raise SnaketuneError(config_path, "unknown config key", field=key, fix=fix)
    specialists = config.get("specialists") or {}
    if not isinstance(specialists, dict) or not specialists:
        raise SnaketuneError(config_path, "no specialists configured", field="specialists",
                             fix="add at least one entry under 'specialists:'")
    for name in specialists:
        if not SPECIALIST_NAME.match(str(name)):
            raise SnaketuneError(
                config_path, f"specialist name {name!r} is not allowed (it becomes a path)",
                field=f"specialists.{name}",
                fix="use lowercase letters, digits and '-' only, starting with a letter or digit")
    schema_errors(config, schema, config_path)
    split = (config.get("data") or {}).get("split") or {}
    ratios = [split.get(k, d) for k, d in (("train", 0.8), ("val", 0.1), ("test", 0.1))]
    if all(isinstance(r, (int, float)) for r in ratios) and abs(sum(ratios) - 1.0) > 1e-6:
        raise SnaketuneError(config_path, f"split ratios sum to {sum(ratios):g}, not 1",
                             field="data.split", fix="make train + val + test equal 1.0")


def deep_merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def fill_stage_defaults(config: dict, schema: dict) -> dict:
    """Fill every key of ``defaults.{lora,train,resources}`` from the schema's defaults.

    validate() fills a block only when it is absent; a config that sets ``defaults.train.lr`` alone
    must still get every other training default, and specialists must not (they override sparsely).
    """
    blocks = schema["properties"]["defaults"]["properties"]
    config.setdefault("defaults", {})
    for block, node in blocks.items():
        config["defaults"][block] = deep_merge(node.get("default", {}), config["defaults"].get(block))
    return config


def specialist_settings(config: dict, name: str) -> dict:
    """The specialist's settings over config['defaults'] (deep merge), plus its name."""
    spec = config["specialists"][name] or {}
    merged = deep_merge(config.get("defaults", {}),
                        {k: spec[k] for k in ("lora", "train", "resources") if k in spec})
    merged["name"] = name
    merged["system_prompt"] = spec.get("system_prompt", "")
    merged["focus_tools"] = list(spec.get("focus_tools", []))
    return merged


def eval_settings(config: dict, name: str) -> dict:
    """What eval uses of a specialist's settings: its name, system prompt and focus tools, and how prompts
    show the tools (as training did, ``chat_template.prompt_tools_rendered``). Nothing else, so that editing
    the specialist's other training settings does not rerun its base eval."""
    from .chat_template import prompt_tools_rendered

    settings = specialist_settings(config, name)
    return {**{key: settings[key] for key in ("name", "system_prompt", "focus_tools")},
            "train": {"tools_rendered": prompt_tools_rendered(settings)}}


# eval keys only the benchmark stage reads: changing them must not rerun the test-set evals
BENCHMARK_ONLY_EVAL_KEYS = ("benchmarks", "benchmark_max_rows", "benchmark_seed", "bfcl_wheel")


def eval_params(config: dict) -> dict:
    """``config['eval']`` as the test-set eval rules take it: without the benchmark stage's keys."""
    return {k: v for k, v in config["eval"].items() if k not in BENCHMARK_ONLY_EVAL_KEYS}


def benchmark_eval_params(config: dict) -> dict:
    """What benchmark scoring takes of ``config['eval']``: decoding only (scoring is always bfcl there)."""
    return {k: config["eval"][k] for k in ("batch_size", "max_new_tokens")}


def benchmark_settings(config: dict, name: str) -> dict:
    """A specialist as benchmark prompts show it: its name and system prompt (every tool in full, not its
    training rendering), so editing its training settings reruns only its tuned benchmark eval."""
    return {"name": name, "system_prompt": specialist_settings(config, name)["system_prompt"]}


def check_inputs(config: dict, config_path: str) -> None:
    """What must exist before anything runs: data sources, a local base model, a GGUF-able architecture."""
    for i, source in enumerate(config["data"]["sources"]):
        if not Path(source["path"]).is_file():
            raise SnaketuneError(config_path, f"data source {source['path']!r} does not exist",
                                 field=f"data.sources[{i}].path",
                                 fix="fix the path (relative to the working directory)")
    name = config["base_model"]["name_or_path"]
    if name.rstrip("/") == TINY_BASE_DIR:
        return
    from .modeling import check_local_dir, looks_local

    if not looks_local(name):
        return  # a hub id: checked when it is loaded
    model_dir = check_local_dir(name, config_path=config_path)
    if config.get("export", {}).get("enabled", True):
        import json

        from .gguf_export import SUPPORTED_FAMILIES

        model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
        if model_type not in SUPPORTED_FAMILIES:
            raise SnaketuneError(config_path,
                                 f"base model architecture {model_type!r} cannot be exported to GGUF",
                                 field="base_model.name_or_path",
                                 fix=f"use a {', '.join(SUPPORTED_FAMILIES)} model "
                                     "or set export.enabled: false")
