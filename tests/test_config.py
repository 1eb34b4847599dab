"""Config questions the rules ask (snaketune.config), and config/README.md's key tables generated from the
schema (snaketune.config_docs)."""

import copy
from pathlib import Path

import pytest
import yaml

from snaketune.config import (
    benchmark_eval_params,
    benchmark_settings,
    eval_params,
    eval_settings,
    fill_stage_defaults,
    load_schema,
    specialist_settings,
)
from snaketune.config_docs import key_rows, undocumented, update_readme

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
        "name": "runner", "system_prompt": "Drive the emulator.", "focus_tools": ["mesen2.run"],
        "train": {"tools_rendered": shown}}


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
    assert benchmark_settings(cfg, "runner") == {"name": "runner", "system_prompt": "Drive the emulator."}


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
