"""Config questions the rules ask (snaketune.config); config layering (a user's --configfile replaces
specialists and data.sources, merges the rest, and errors name the file a key came from); system_prompt_mode
from the config to the prompts and the eval JSON; config/README.md's key tables generated from the schema
(snaketune.config_docs)."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from snaketune.chat_template import build_messages, specialist_chat
from snaketune.config import (
    benchmark_eval_params,
    benchmark_settings,
    check_config,
    check_inputs,
    eval_params,
    eval_settings,
    fill_stage_defaults,
    layered_config,
    load_schema,
    specialist_settings,
)
from snaketune.config_docs import key_rows, undocumented, update_readme
from snaketune.errors import SnaketuneError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(REPO / "config" / "schemas" / "config.schema.yaml")


def config(rendered=None, **spec) -> dict:
    specialist = {"system_prompt": "Drive the emulator.", "focus_tools": ["mesen2.run"], **spec}
    out = {"defaults": {"train": {"lr": 1.0e-3, **({"tools_rendered": rendered} if rendered else {})}},
           "specialists": {"runner": specialist}}
    return fill_stage_defaults(out, SCHEMA)


@pytest.mark.parametrize(("rendered", "shown"), [("all", "all"), ("compact", "compact"), ("called", "all")])
def test_eval_settings_render_tools_as_training_did_but_never_only_the_called_ones(rendered, shown):
    assert eval_settings(config(rendered), "runner") == {
        "name": "runner", "system_prompt": "Drive the emulator.", "system_prompt_mode": "prepend",
        "focus_tools": ["mesen2.run"], "train": {"tools_rendered": shown}, "resources": {"device": "auto"}}


def test_eval_settings_ignore_training_settings_that_do_not_change_the_prompts():
    plain = eval_settings(config(), "runner")
    tuned = eval_settings(config(train={"lr": 5.0e-3, "max_steps": 9}, lora={"r": 4}, resources={"gpus": 1}),
                          "runner")
    assert tuned == plain
    # while training does see them
    assert specialist_settings(config(train={"lr": 5.0e-3}), "runner")["train"]["lr"] == 5.0e-3


def test_test_set_evals_do_not_take_the_benchmark_stages_keys_and_benchmarks_take_decoding_only():
    cfg = config()
    cfg["eval"] = {
        "batch_size": 8,
        "max_new_tokens": 64,
        "targets": {},
        "scoring": "strict",
        "benchmarks": ["bfcl_multiple"],
        "benchmark_max_rows": 5,
        "benchmark_seed": 1,
        "bfcl_wheel": None,
    }
    assert eval_params(cfg) == {"batch_size": 8, "max_new_tokens": 64, "targets": {}, "scoring": "strict"}
    assert benchmark_eval_params(cfg) == {"batch_size": 8, "max_new_tokens": 64}
    assert benchmark_settings(cfg, "runner") == {"name": "runner", "system_prompt": "Drive the emulator.",
                                                 "resources": {"device": "auto"}}


def test_specialist_settings_default_what_the_specialist_leaves_out():
    with_bare = config()
    with_bare["specialists"]["bare"] = None  # `bare:` with nothing under it
    settings = specialist_settings(with_bare, "bare")
    assert settings["name"] == "bare" and settings["system_prompt"] == "" and settings["focus_tools"] == []
    assert settings["train"]["lr"] == 1.0e-3 and settings["lora"]["r"] == 16


# ------------------------------------------------------------------ config/README.md from the schema


def test_every_config_key_has_a_description():
    assert undocumented(SCHEMA) == []


def test_config_readme_key_tables_are_what_the_schema_generates():
    readme = (REPO / "config" / "README.md").read_text(encoding="utf-8")
    assert update_readme(readme, SCHEMA) == readme, "run `python -m snaketune.config_docs write`"


def test_every_key_of_the_default_config_has_a_row():
    def keys(node, prefix=""):
        for key, value in node.items():
            yield prefix + key
            if isinstance(value, dict):
                yield from keys(value, prefix + key + ".")

    documented = {(table, key) for table, rows in key_rows(SCHEMA).items() for key, _, _ in rows}
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    for section, value in config.items():
        if section == "specialists":
            wanted = {("specialists", key) for spec in value.values() for key in keys(spec)}
        elif section == "defaults":
            wanted = {("specialists", key) for key in keys(value)}
        elif isinstance(value, dict):
            wanted = {(section, key) for key in keys(value)}
        else:
            wanted = {(section, section)}
        assert wanted <= documented, wanted - documented


def test_a_schema_edit_changes_its_table_and_a_lost_block_is_an_error():
    readme = (REPO / "config" / "README.md").read_text(encoding="utf-8")
    edited = copy.deepcopy(SCHEMA)
    edited["properties"]["eval"]["properties"]["max_new_tokens"]["default"] = 64
    assert "| `max_new_tokens` | `64` | generation budget per example |" in update_readme(readme, edited)
    with pytest.raises(ValueError, match=r"no generated block for \['verify'\]"):
        update_readme(readme.replace("<!-- begin config_docs verify", "<!-- begin something else"), SCHEMA)


# ------------------------------------------------------------------ layering and system_prompt_mode


def write_yaml(path: Path, value) -> str:
    path.write_text(yaml.safe_dump(value, sort_keys=False))
    return str(path)


@pytest.fixture
def default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    return write_yaml(
        tmp_path / "config" / "config.yaml", yaml.safe_load((REPO / "config/config.yaml").read_text())
    )


def test_a_user_file_replaces_specialists_and_sources_and_merges_the_rest(default, tmp_path):
    user = write_yaml(
        tmp_path / "my.yaml",
        {
            "data": {"demo": {"enabled": False}, "sources": [{"path": "mine.jsonl"}]},
            "defaults": {"train": {"lr": 1.0e-4}},
            "specialists": {"debugger": {"focus_tools": ["dbg.read"]}},
        },
    )
    layers = layered_config(default, [user])
    config = layers.config
    assert list(config["specialists"]) == ["debugger"]
    assert config["data"]["sources"] == [{"path": "mine.jsonl"}]
    assert config["data"]["demo"] == {"enabled": False, "rows": 874, "seed": 42}  # merged
    assert config["defaults"]["train"]["lr"] == 1.0e-4 and config["defaults"]["train"]["max_steps"] == 300
    assert config["eval"]["batch_size"] == 32  # untouched keys come from the default
    assert layers.file_of("specialists.debugger.focus_tools") == "my.yaml"
    assert layers.file_of("data.sources[0].path") == "my.yaml"
    assert layers.file_of("defaults.train.lr") == "my.yaml"
    assert layers.file_of("defaults.train.max_steps") == "config/config.yaml"
    assert layers.file_of("data.split") == "config/config.yaml"
    assert layers.file_of("eval.targets.exact_match") == "config/config.yaml"


def test_a_user_file_without_specialists_keeps_the_default_ones(default, tmp_path):
    user = write_yaml(tmp_path / "two.yaml", {"defaults": {"train": {"processes": 2}}})
    layers = layered_config(default, [user])
    assert sorted(layers.config["specialists"]) == ["mesen-runner", "veran-tools", "z3ed-rom"]
    assert specialist_settings(layers.config, "veran-tools")["train"]["processes"] == 2
    assert layers.file_of("specialists.veran-tools") == "config/config.yaml"


def test_later_files_and_command_line_values_apply_on_top(default, tmp_path):
    first = write_yaml(tmp_path / "a.yaml", {"specialists": {"a": {}}, "eval": {"max_new_tokens": 10}})
    second = write_yaml(tmp_path / "b.yaml", {"specialists": {"b": {}}, "eval": {"batch_size": 4}})
    layers = layered_config(default, [first, second], {"audit_strict": "false", "eval": {"batch_size": 2}})
    assert list(layers.config["specialists"]) == ["b"]
    assert layers.config["eval"]["max_new_tokens"] == 10 and layers.config["eval"]["batch_size"] == 2
    assert layers.config["audit_strict"] == "false"
    assert (
        layers.file_of("eval.batch_size") == "--config" and layers.file_of("eval.max_new_tokens") == "a.yaml"
    )
    assert layers.file_of("specialists.b") == "b.yaml"
    replaced = layered_config(None, [second])  # --replace-workflow-config: no default underneath
    assert "base_model" not in replaced.config and replaced.file_of("base_model") == "b.yaml"


def test_config_errors_name_the_file_the_key_came_from(default, tmp_path):
    cases = [
        (
            {"data": {"spilt": {"seed": 3}}},
            "my.yaml: data.spilt: unknown config key (fix: did you mean 'split'?)",
        ),
        (
            {"specialists": {"debugger": {"train": {"lr": "fast"}}}},
            "my.yaml: specialists.debugger.train.lr: 'fast' is not of type number",
        ),
        (
            {"specialists": {"Debugger": {}}},
            "my.yaml: specialists.Debugger: specialist name 'Debugger' is not allowed",
        ),
        ({"data": {"split": {"val": 0.3}}}, "my.yaml: data.split: split ratios sum to 1.2"),
        (
            {"data": {"sources": [{"path": "q.json", "format": "bfcl"}]}},
            "my.yaml: data.sources[0].answers: a bfcl source needs its possible_answer file",
        ),
        (
            {
                "data": {
                    "sources": [{"path": "x.jsonl", "format": "axolotl", "options": {"field_mesages": "c"}}]
                }
            },
            (
                "my.yaml: data.sources[0].options.field_mesages: unknown axolotl option (fix: did you mean "
                "'field_messages'?)"
            ),
        ),
    ]
    for user_config, start in cases:
        layers = layered_config(default, [write_yaml(tmp_path / "my.yaml", user_config)])
        with pytest.raises(SnaketuneError) as info:
            check_config(layers.config, SCHEMA, layers)
        assert str(info.value).startswith(start), str(info.value)
    layers = layered_config(default, [], {"eval": {"batch_size": 0}})
    with pytest.raises(SnaketuneError, match=r"^--config: eval.batch_size: 0 is less than the minimum of 1"):
        check_config(layers.config, SCHEMA, layers)
    layers = layered_config(
        default, [write_yaml(tmp_path / "my.yaml", {"data": {"sources": [{"path": "gone.jsonl"}]}})]
    )
    with pytest.raises(
        SnaketuneError, match=r"^my.yaml: data.sources\[0\].path: data source 'gone.jsonl' does not"
    ):
        check_inputs(layers.config, layers)
    layers = layered_config(
        default, [write_yaml(tmp_path / "my.yaml", {"base_model": {"name_or_path": "./nope"}})]
    )
    with pytest.raises(SnaketuneError, match=r"^my.yaml: base_model.name_or_path: base model directory"):
        check_inputs(layers.config, layers)


def test_a_config_file_that_is_not_a_mapping_is_named(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- specialists\n")
    with pytest.raises(SnaketuneError, match="list.yaml: holds a list, not a mapping"):
        layered_config(None, [str(bad)])


# ------------------------------------------------------------------ system_prompt_mode

ROW = {
    "messages": [
        {"role": "system", "content": "The ROM is roms/zelda.sfc."},
        {"role": "user", "content": "Load it"},
        {"role": "assistant", "content": "ok"},
    ],
    "tools": [],
}
BARE = {"messages": ROW["messages"][1:], "tools": []}


@pytest.mark.parametrize(
    "mode,with_own,without_own",
    [
        ("prepend", "You drive Mesen2.\n\nThe ROM is roms/zelda.sfc.", "You drive Mesen2."),
        ("replace", "You drive Mesen2.", "You drive Mesen2."),
        ("keep", "The ROM is roms/zelda.sfc.", "You drive Mesen2."),
    ],
)
def test_system_prompt_modes(mode, with_own, without_own):
    for row, want in ((ROW, with_own), (BARE, without_own)):
        messages, _ = build_messages(row, "You drive Mesen2.", system_prompt_mode=mode)
        assert [m["content"] for m in messages if m["role"] == "system"] == [want]
        assert messages[1:] == row["messages"][-2:]
    assert (
        build_messages(ROW, "")[0] == ROW["messages"]
    )  # no specialist prompt: the row's own, whatever the mode


def test_prepend_is_the_default_and_a_specialist_overrides_defaults(default):
    config = layered_config(default).config
    config["defaults"]["system_prompt_mode"] = "keep"
    config["specialists"]["veran-tools"]["system_prompt_mode"] = "replace"
    assert specialist_settings(config, "veran-tools")["system_prompt_mode"] == "replace"
    assert specialist_settings(config, "z3ed-rom")["system_prompt_mode"] == "keep"
    del config["defaults"]["system_prompt_mode"]
    settings = specialist_settings(config, "z3ed-rom")
    assert settings["system_prompt_mode"] == "prepend"
    assert specialist_chat(ROW, settings)[0][0]["content"].endswith("\n\nThe ROM is roms/zelda.sfc.")


def test_the_eval_rules_params_carry_the_mode(default, tmp_path):
    """Eval params come from eval_settings (common.smk): changing the mode changes them, so evals rerun."""
    from snakemake.api import SnakemakeApi
    from snakemake.iocontainers import InputFiles, OutputFiles, Wildcards
    from snakemake.settings.types import ConfigSettings, OutputSettings, Quietness, ResourceSettings

    from pipeline import make_workdir

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    work = make_workdir(tmp_path / "w", config)
    write_yaml(
        work / "mode.yaml",
        {"specialists": {"runner": {"system_prompt": "Run.", "system_prompt_mode": "keep"}}},
    )
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            snakefile=work / "Snakefile",
            workdir=work,
            config_settings=ConfigSettings(configfiles=[work / "mode.yaml"]),
        )._workflow
        params, _ = workflow.get_rule("evaluate_base").expand_params(
            Wildcards(fromdict={"specialist": "runner"}), InputFiles(), OutputFiles(), None
        )
    assert params.spec["system_prompt_mode"] == "keep" and params.spec["system_prompt"] == "Run."


def test_the_eval_json_records_the_mode(tmp_path):
    from snaketune.evaluation import evaluate
    from snaketune.files import read_jsonl, write_jsonl

    from pipeline import small_base

    base_cfg = small_base(tmp_path)
    write_jsonl(tmp_path / "test.jsonl", read_jsonl(tmp_path / "train.jsonl")[:2])
    settings = {
        "name": "runner",
        "system_prompt": "Run.",
        "system_prompt_mode": "keep",
        "focus_tools": [],
        "train": {"tools_rendered": "all"},
    }
    result = evaluate(
        base_cfg=base_cfg,
        test_path=tmp_path / "test.jsonl",
        settings=settings,
        eval_cfg={"batch_size": 2, "max_new_tokens": 4, "targets": {}},
        out_json=tmp_path / "e.json",
        out_generations=tmp_path / "g.jsonl",
        out_timing=tmp_path / "t.json",
        threads=1,
        progress=False,
        config_path="config/config.yaml",
    )
    assert result["generation"]["system_prompt_mode"] == "keep"
    assert json.loads((tmp_path / "e.json").read_text())["generation"]["system_prompt_mode"] == "keep"


@pytest.mark.e2e
def test_command_line_values_apply_on_top_of_the_files(tmp_path):
    """Through Snakemake: --configfile replaces the specialists, --config replaces them again."""
    from pipeline import make_workdir, planned_jobs, snakemake

    work = make_workdir(tmp_path / "w", yaml.safe_load((REPO / "config/config.yaml").read_text()))
    write_yaml(work / "one.yaml", {"specialists": {"solo": {}}})
    assert planned_jobs(work, "--configfile", "one.yaml")["train"] == 1
    args = ("--configfile", "one.yaml", "--config", "specialists={'left': {}, 'right': {}}")
    assert planned_jobs(work, *args)["train"] == 2
    dry = snakemake(work, "-n", *args).stdout
    assert "results/adapters/left" in dry and "results/adapters/right" in dry and "solo" not in dry
    bad = ("--configfile", "one.yaml", "--config", "eval={'batch_size': 0}")
    proc = snakemake(work, "-n", *bad, check=False)
    assert proc.returncode != 0  # (Snakemake reads the nested 0 as a string)
    assert "--config: eval.batch_size: '0' is not of type integer" in proc.stdout + proc.stderr
