"""What the config asks to build (snaketune.targets): rule all's targets and export's choice of GGUF types."""

import pytest

from snaketune.targets import base_gguf_path, final_targets, lora_base_quant, modelfile_quant

EXPORT_ON = {"enabled": True, "quants": ["f16", "q8_0"], "lora_gguf": True, "parity": True}


def config(export=None, specialists=("veran-tools", "mesen-runner"), benchmarks=()) -> dict:
    return {"specialists": {name: {} for name in specialists}, "export": {**EXPORT_ON, **(export or {})},
            "eval": {"benchmarks": list(benchmarks)}}


@pytest.mark.parametrize(("quants", "lora_base", "modelfile"), [
    (["f16", "q8_0"], "f16", "q8_0"),
    (["q8_0", "f32"], "f32", "q8_0"),
    (["f32", "f16"], "f32", "f16"),
    (["q8_0"], "q8_0", "q8_0"),
    (["f32"], "f32", "f32"),
])
def test_lora_base_is_the_most_precise_type_and_ollama_runs_q8_0_else_the_most_compact(
        quants, lora_base, modelfile):
    assert lora_base_quant(quants) == lora_base
    assert modelfile_quant(quants) == modelfile
    assert base_gguf_path(quants) == f"results/gguf/base/base.{lora_base}.gguf"


def test_export_off_builds_data_adapters_eval_and_report_tables():
    assert final_targets(config({"enabled": False})) == [
        "results/env/requirements.lock.txt", "results/env/lock_report.json", "results/env/verify.json",
        "results/data/split_stats.json",
        "results/adapters/mesen-runner", "results/adapters/veran-tools",
        "results/eval/summary.md",
        "results/report/split_stats.csv", "results/report/verify.csv", "results/report/eval_summary.csv",
    ]


def test_export_on_adds_every_gguf_modelfile_lora_base_and_parity():
    targets = final_targets(config(specialists=["veran-tools"]))
    export = [t for t in targets if t.startswith("results/gguf/")]
    assert export == ["results/gguf/veran-tools.f16.gguf", "results/gguf/veran-tools.q8_0.gguf",
                      "results/gguf/veran-tools.Modelfile", "results/gguf/veran-tools.lora.gguf",
                      "results/gguf/base/base.f16.gguf", "results/gguf/veran-tools.parity.json"]
    assert targets[-1] == "results/report/parity.csv"


def test_lora_gguf_and_parity_switch_their_files_off():
    targets = final_targets(config({"lora_gguf": False, "parity": False, "quants": ["q8_0"]}))
    assert [t for t in targets if t.startswith("results/gguf/")] == [
        "results/gguf/mesen-runner.q8_0.gguf", "results/gguf/veran-tools.q8_0.gguf",
        "results/gguf/mesen-runner.Modelfile", "results/gguf/veran-tools.Modelfile"]
    assert "results/report/parity.csv" not in targets


def test_benchmarks_add_each_specialists_table_and_the_report_csv_only_when_configured():
    assert not any("benchmarks" in t or "bfcl" in t for t in final_targets(config()))
    targets = final_targets(config(benchmarks=["bfcl_simple_python"]))
    assert targets[-3:] == [
        "results/eval/benchmarks/mesen-runner.json",
        "results/eval/benchmarks/veran-tools.json",
        "results/report/bfcl.csv",
    ]
