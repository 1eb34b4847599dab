"""Config questions the rules ask (snaketune.config): each specialist's merged settings and what eval uses."""

from pathlib import Path

import pytest

from snaketune.config import eval_settings, fill_stage_defaults, load_schema, specialist_settings

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


def test_specialist_settings_default_what_the_specialist_leaves_out():
    with_bare = config()
    with_bare["specialists"]["bare"] = None  # `bare:` with nothing under it
    settings = specialist_settings(with_bare, "bare")
    assert settings["name"] == "bare" and settings["system_prompt"] == "" and settings["focus_tools"] == []
    assert settings["train"]["lr"] == 1.0e-3 and settings["lora"]["r"] == 16
