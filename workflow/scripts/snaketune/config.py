"""Config questions the rules ask: layering of config files, checks beyond the schema, and each
specialist's merged settings."""

from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import SnaketuneError, field_path, schema_problem

__all__ = [
    "TINY_BASE_DIR", "load_schema", "check_config", "deep_merge", "fill_stage_defaults",
    "specialist_settings", "eval_settings", "check_inputs", "eval_params", "benchmark_eval_params",
    "benchmark_settings", "BENCHMARK_ONLY_EVAL_KEYS", "LayeredConfig", "layered_config", "load_config_file",
    "origin_of", "display_path", "check_sources", "schema_errors", "unknown_keys", "REPLACED_KEYS",
    "resolve_base_model",
]

SPECIALIST_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
TINY_BASE_DIR = "results/base/tiny"


# Keys a later config file replaces as a whole; everything else deep-merges. A user's file that names its
# specialists (or its data sources) means exactly those, not the demo's plus its own.
REPLACED_KEYS = ("specialists", "data.sources")
COMMAND_LINE = "--config"


def display_path(path) -> str:
    """A config file as the user named it: relative to the working directory when it lies inside it."""
    text = str(path)
    if text == COMMAND_LINE or not os.path.isabs(text):
        return text
    rel = os.path.relpath(text)
    return text if rel.startswith("..") else rel


def _parent(key: str) -> str:
    match = re.match(r"^(.+?)(\[\d+\]|\.[^.\[\]]*)$", key)
    return match.group(1) if match else ""


def origin_of(origins: dict, key: str | None, default: str | None) -> str | None:
    """The file that set ``key`` (a field path such as ``data.sources[0].path``) or its nearest parent."""
    key = key or ""
    while key:
        if key in origins:
            return origins[key]
        key = _parent(key)
    return default


@dataclass
class LayeredConfig:
    """The config as the layers make it, and which file set each key (``file_of``)."""

    config: dict
    origins: dict = field(default_factory=dict)  # "data.split.seed" / "specialists" -> file (replaced values)
    default_path: str | None = None  # the workflow's default config file (None: replaced)
    layers: list = field(default_factory=list)  # file names, first to last

    def file_of(self, key: str | None) -> str:
        """The file to name for ``key``: the one that set it (or the nearest parent that was set whole); for a
        mapping that several files merged into, the last file that set something inside it."""
        key = key or ""
        inside = [name for path, name in self.origins.items() if path.startswith((key + ".", key + "["))]
        if key and key not in self.origins and inside:
            return max(inside, key=self.layers.index)
        return origin_of(self.origins, key, self.default_path)

    def files_of(self, *keys: str) -> dict:
        """{key: file} for the keys a rule passes on (its errors name the right file)."""
        return {key: self.file_of(key) for key in keys}


def _where(config_path, key: str | None) -> str:
    """The file to name for ``key``: a LayeredConfig knows; a plain path is the answer for every key."""
    return config_path.file_of(key) if isinstance(config_path, LayeredConfig) else str(config_path)


def load_config_file(path) -> dict:
    try:
        value = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SnaketuneError(display_path(path), f"not valid YAML: {str(err).splitlines()[0]}",
                             fix="check the indentation and quoting") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SnaketuneError(display_path(path), f"holds a {type(value).__name__}, not a mapping of keys",
                             fix="write keys such as 'specialists:' at the top level")
    return value


def _merge_layer(acc: dict, layer: dict, origins: dict, name: str, prefix: str = "") -> None:
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(acc.get(key), dict) and dotted not in REPLACED_KEYS:
            _merge_layer(acc[key], value, origins, name, dotted + ".")  # the mapping keeps its first file
            continue
        acc[key] = copy.deepcopy(value)
        for old in [k for k in origins if k.startswith((dotted + ".", dotted + "["))]:
            del origins[old]
        origins[dotted] = name


def layered_config(default_path, user_paths=(), overrides=None) -> LayeredConfig:
    """The default config, then each user file, then command-line values, as one config.

    ``specialists`` and ``data.sources`` of a later layer replace the earlier ones; every other key
    deep-merges (so ``defaults.train.lr`` alone changes one value). ``default_path`` may be None or absent
    (Snakemake's --replace-workflow-config, or a checkout without it). ``overrides`` are Snakemake's
    ``--config key=value`` pairs (named ``--config`` in errors).
    """
    layers = []
    if default_path is not None and Path(default_path).is_file():
        layers.append((display_path(default_path), load_config_file(default_path)))
    for path in user_paths or ():
        layers.append((display_path(path), load_config_file(path)))
    if overrides:
        layers.append((COMMAND_LINE, {key: copy.deepcopy(value) for key, value in dict(overrides).items()}))
    config, origins = {}, {}
    for name, layer in layers:
        _merge_layer(config, layer, origins, name)
    default = display_path(default_path) if default_path is not None else (layers[0][0] if layers else "")
    return LayeredConfig(config, origins, default, [name for name, _ in layers])


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


def schema_errors(config: dict, schema: dict, config_path) -> None:
    """Type / range / enum errors as one line naming the key and its file (Snakemake's own is a dump)."""
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
    raise SnaketuneError(_where(config_path, key), schema_problem(err), field=key, fix=fix)


def check_sources(config: dict, config_path) -> None:
    """What the schema cannot say about data.sources: keys that belong to one format, its options."""
    from .formats import check_options

    for i, source in enumerate((config.get("data") or {}).get("sources") or []):
        if not isinstance(source, dict):
            continue  # the schema's error
        key = f"data.sources[{i}]"
        fmt = source.get("format", "auto")
        if fmt == "bfcl" and not source.get("answers"):
            raise SnaketuneError(_where(config_path, key), "a bfcl source needs its possible_answer file",
                                 field=f"{key}.answers",
                                 fix="add answers: path/to/possible_answer/<same name>.json")
        if source.get("answers") and fmt != "bfcl":
            raise SnaketuneError(_where(config_path, key), f"'answers' belongs to format: bfcl, not {fmt!r}",
                                 field=f"{key}.answers", fix="set format: bfcl or remove answers")
        try:
            check_options(fmt, source.get("options") or {})
        except SnaketuneError as err:
            raise SnaketuneError(_where(config_path, key), err.problem, field=f"{key}.options.{err.field}"
                                 if err.field else f"{key}.options", fix=err.fix) from None


def check_config(config: dict, schema: dict, config_path) -> None:
    """Checks with messages a user can act on, run before Snakemake's validate().

    ``config_path`` is the file to name in errors, or a LayeredConfig that knows each key's file.
    """
    for key, suggestion in unknown_keys(config, schema):
        fix = (
            f"did you mean '{suggestion}'?" if suggestion else "remove it (config/README.md lists every key)"
        )
        raise SnaketuneError(_where(config_path, key), "unknown config key", field=key, fix=fix)
    specialists = config.get("specialists") or {}
    if not isinstance(specialists, dict) or not specialists:
        raise SnaketuneError(_where(config_path, "specialists"), "no specialists configured",
                             field="specialists", fix="add at least one entry under 'specialists:'")
    for name in specialists:
        if not SPECIALIST_NAME.match(str(name)):
            raise SnaketuneError(
                _where(config_path, f"specialists.{name}"),
                f"specialist name {name!r} is not allowed (it becomes a path)", field=f"specialists.{name}",
                fix="use lowercase letters, digits and '-' only, starting with a letter or digit")
    schema_errors(config, schema, config_path)
    check_sources(config, config_path)
    split = (config.get("data") or {}).get("split") or {}
    ratios = [split.get(k, d) for k, d in (("train", 0.8), ("val", 0.1), ("test", 0.1))]
    if all(isinstance(r, (int, float)) for r in ratios) and abs(sum(ratios) - 1.0) > 1e-6:
        raise SnaketuneError(_where(config_path, "data.split"), f"split ratios sum to {sum(ratios):g}, not 1",
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
        if isinstance(node.get("default"), dict):
            config["defaults"][block] = deep_merge(node["default"], config["defaults"].get(block))
        elif "default" in node:  # a single setting such as system_prompt_mode
            config["defaults"].setdefault(block, node["default"])
    return config


def specialist_settings(config: dict, name: str) -> dict:
    """The specialist's settings over config['defaults'] (deep merge), plus its name."""
    spec = config["specialists"][name] or {}
    merged = deep_merge(config.get("defaults", {}),
                        {k: spec[k] for k in ("lora", "train", "resources") if k in spec})
    merged["name"] = name
    merged["system_prompt"] = spec.get("system_prompt", "")
    default_mode = (config.get("defaults") or {}).get("system_prompt_mode", "prepend")
    merged["system_prompt_mode"] = spec.get("system_prompt_mode", default_mode)
    merged["focus_tools"] = list(spec.get("focus_tools", []))
    return merged


def eval_settings(config: dict, name: str) -> dict:
    """What eval uses of a specialist's settings: its name, system prompt (and how it meets the row's own),
    focus tools, the device it runs on (resources.device), and how prompts
    show the tools (as training did, ``chat_template.prompt_tools_rendered``). Nothing else, so that editing
    the specialist's other training settings does not rerun its base eval."""
    from .chat_template import prompt_tools_rendered

    settings = specialist_settings(config, name)
    return {**{key: settings[key] for key in ("name", "system_prompt", "system_prompt_mode", "focus_tools")},
            "train": {"tools_rendered": prompt_tools_rendered(settings)},
            "resources": {"device": settings["resources"]["device"]}}


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
    settings = specialist_settings(config, name)
    return {"name": name, "system_prompt": settings["system_prompt"],
            "resources": {"device": settings["resources"]["device"]}}


def check_inputs(config: dict, config_path) -> None:
    """What must exist before anything runs: data sources, a local base model, a GGUF-able architecture.

    ``config_path`` is the file to name in errors, or a LayeredConfig that knows each key's file.
    """
    for i, source in enumerate(config["data"]["sources"]):
        for key in ("path", "answers"):
            if key in source and not Path(source[key]).is_file():
                raise SnaketuneError(_where(config_path, f"data.sources[{i}]"),
                                     f"data source {source[key]!r} does not exist",
                                     field=f"data.sources[{i}].{key}",
                                     fix="fix the path (relative to the working directory)")
    name = config["base_model"]["name_or_path"]
    if name.rstrip("/") == TINY_BASE_DIR:
        return
    if config["base_model"].get("gguf_file"):
        _check_gguf_base(config, config_path)
        return
    from .modeling import check_local_dir, looks_local

    if not looks_local(name):
        return  # a hub id: checked when it is loaded
    model_dir = check_local_dir(name, config_path=_where(config_path, "base_model.name_or_path"))
    if config.get("export", {}).get("enabled", True):
        import json

        from .gguf_export import SUPPORTED_FAMILIES

        model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
        if model_type not in SUPPORTED_FAMILIES:
            raise SnaketuneError(_where(config_path, "base_model.name_or_path"),
                                 f"base model architecture {model_type!r} cannot be exported to GGUF",
                                 field="base_model.name_or_path",
                                 fix=f"use a {', '.join(SUPPORTED_FAMILIES)} model "
                                     "or set export.enabled: false")


def _check_gguf_base(config: dict, config_path) -> None:
    """A GGUF base (resolved by snaketune.gguf_base.resolve_base_model): its file is there unless the
    pipeline fetches it, and its architecture is one GGUF export writes while export is on."""
    from .gguf_base import PYPI_ROOT, gguf_base_architecture

    base = config["base_model"]
    gguf_file = str(base["gguf_file"])
    if not base.get("pypi_gguf") and not Path(gguf_file).is_file():
        raise SnaketuneError(_where(config_path, "base_model.gguf_file"),
                             f"GGUF file {gguf_file!r} does not exist", field="base_model.gguf_file",
                             fix="use base_model.pypi_gguf" if gguf_file.startswith(PYPI_ROOT)
                             else "fix the path (relative to the working directory)")
    if not config.get("export", {}).get("enabled", True):
        return
    from .gguf_export import ARCHITECTURES

    arch = gguf_base_architecture(base)
    if arch is not None and arch not in set(ARCHITECTURES.values()):
        key = "base_model.pypi_gguf" if base.get("pypi_gguf") else "base_model.gguf_file"
        raise SnaketuneError(_where(config_path, key),
                             f"base model architecture {arch!r} (GGUF) cannot be exported to GGUF",
                             field=key,
                             fix="use a llama, mistral or qwen2 base, or set export.enabled: false")


def resolve_base_model(base_cfg: dict, config_path=None) -> dict:
    """``base_model`` as every rule takes it: for a GGUF base (``gguf_file``, or ``pypi_gguf`` whose GGUF the
    pipeline fetches to results/base/pypi/), ``name_or_path`` is the directory rule gguf_base converts it
    into and ``gguf_file`` the file; a known PyPI base brings its chat format where the config sets none.
    Other bases pass unchanged."""
    from .gguf_base import PYPI_BASES, gguf_base_dir, pypi_gguf_path

    base = dict(base_cfg)
    gguf_file, pypi = base.get("gguf_file"), base.get("pypi_gguf")
    if not gguf_file and not pypi:
        return base
    if gguf_file and pypi:
        raise SnaketuneError(config_path, "gguf_file and pypi_gguf both name a base", field="base_model",
                             fix="keep one of them")
    name = str(base.get("name_or_path") or TINY_BASE_DIR).rstrip("/")
    if name != TINY_BASE_DIR:
        raise SnaketuneError(config_path, f"name_or_path ({name!r}) and a GGUF base both name a base",
                             field="base_model.name_or_path",
                             fix="remove name_or_path (the GGUF is the base)")
    if pypi:
        if pypi not in PYPI_BASES:
            raise SnaketuneError(config_path, f"unknown PyPI base {pypi!r}", field="base_model.pypi_gguf",
                                 fix=f"use one of {', '.join(PYPI_BASES)}, or base_model.gguf_file")
        gguf_file = pypi_gguf_path(pypi)
        if not base.get("chat_template") and PYPI_BASES[pypi]["chat_template"]:
            base["chat_template"] = PYPI_BASES[pypi]["chat_template"]
    base["gguf_file"] = str(gguf_file)
    base["name_or_path"] = gguf_base_dir(gguf_file)
    base["revision"] = None
    return base
