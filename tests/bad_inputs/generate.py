"""Writes the bad-input corpus: one directory per case with its files and case.yaml.

Run `python tests/bad_inputs/generate.py` after changing a case; the directories are committed.
Each case.yaml holds: what is wrong, the config overrides, and the pieces of the one error line it
must produce (file and line or config key, the problem, the fix).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

RUN = {"type": "function", "function": {
    "name": "mesen2.run", "description": "Run the emulator for a number of frames.",
    "parameters": {"type": "object", "properties": {"frames": {"type": "integer", "minimum": 1}},
                   "required": ["frames"], "additionalProperties": False}}}
LOAD = {"type": "function", "function": {
    "name": "mesen2.load_rom", "description": "Load a ROM file.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}


def row(i: int, **change) -> dict:
    out = {"messages": [{"role": "user", "content": f"Run the game for {i + 1} frames"},
                        {"role": "assistant", "content": None, "tool_calls": [
                            {"type": "function", "function": {"name": "mesen2.run",
                                                              "arguments": json.dumps({"frames": i + 1})}}]}],
           "tools": [RUN, LOAD]}
    out.update(change)
    return out


def call(name="mesen2.run", arguments='{"frames": 3}') -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def good_rows(n: int = 24) -> list:
    return [json.dumps(row(i)) for i in range(n)]


def with_line(bad, at: int = 5, n: int = 24) -> list:
    """Good rows with ``bad`` (a JSON value or raw text) as line ``at``."""
    lines = good_rows(n)
    lines.insert(at - 1, bad if isinstance(bad, str) else json.dumps(bad))
    return lines


def assistant(**fields) -> dict:
    return row(0, messages=[{"role": "user", "content": "Run 3 frames"}, {"role": "assistant", **fields}])


SOURCE = {"data": {"sources": [{"path": "data.jsonl"}]}}

# The shape of the tiny base for cases that build one (small: built in seconds).
TINY_BASE = {"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
             "num_kv_heads": 1}

# name: (what is wrong, files {name: lines or bytes}, config overrides, expected pieces)
CASES = {
    "malformed_json_line": ("a line that is not JSON", {"data.jsonl": with_line('{"messages": [')}, SOURCE,
                            ["data.jsonl:5", "not valid JSON", "fix:"]),
    "wrong_type_messages": ("messages is a string",
                            {"data.jsonl": with_line({"messages": "hello"}, 3)}, SOURCE,
                            ["data.jsonl:3", "messages", "not of type array", "fix:"]),
    "wrong_type_content": ("content is a number", {"data.jsonl": with_line(
        row(0, messages=[{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]), 7)}, SOURCE,
        ["data.jsonl:7", "messages[0].content", "5 is not of type string", "fix:"]),
    "missing_messages": ("a row without messages", {"data.jsonl": with_line({"tools": [RUN]}, 2)}, SOURCE,
                         ["data.jsonl:2", "unknown row shape (keys: tools)", "sharegpt", "fix:"]),
    "unknown_role": ("role 'human'", {"data.jsonl": with_line(
        row(0,
            messages=[{"role": "human", "content": "hi"},
                      {"role": "assistant", "content": "x"}]), 4)}, SOURCE,
        ["data.jsonl:4", "messages[0].role", "'human'", "fix:"]),
    "arguments_a_number": ("arguments given as a number (an object or its JSON string is right)", {
        "data.jsonl": with_line(assistant(content=None, tool_calls=[
            {"type": "function", "function": {"name": "mesen2.run", "arguments": 3}}]), 6)},
        SOURCE, ["data.jsonl:6", "messages[1].tool_calls[0].function.arguments",
                 "not of type string or object", "fix:"]),
    "arguments_do_not_parse": ("arguments string is not JSON", {"data.jsonl": with_line(
        assistant(content=None, tool_calls=[call(arguments="{frames: 3")]), 6)}, SOURCE,
        ["data.jsonl:6", "messages[1].tool_calls[0].function.arguments", "json.dumps"]),
    "arguments_not_an_object": ("arguments string holds a list", {"data.jsonl": with_line(
        assistant(content=None, tool_calls=[call(arguments="[3]")]), 6)}, SOURCE,
        ["data.jsonl:6", "not an object", "fix:"]),
    "tool_absent_from_tools": ("a call to a tool the row does not define", {"data.jsonl": with_line(
        assistant(content=None, tool_calls=[call(name="mesen2.explode")]), 8)}, SOURCE,
        ["data.jsonl:8", "messages[1].tool_calls[0].function.name", "mesen2.explode", "fix:"]),
    "arguments_violate_schema": ("frames is a string", {"data.jsonl": with_line(
        assistant(content=None, tool_calls=[call(arguments='{"frames": "sixty"}')]), 9)}, SOURCE,
        ["data.jsonl:9", "function.arguments.frames", "parameters", "fix:"]),
    "missing_required_argument": ("frames missing", {"data.jsonl": with_line(
        assistant(content=None, tool_calls=[call(arguments="{}")]), 9)}, SOURCE,
        ["data.jsonl:9", "'frames' is a required property", "fix:"]),
    "extra_argument": ("an argument the schema forbids", {"data.jsonl": with_line(
        assistant(content=None, tool_calls=[call(arguments='{"frames": 3, "speed": 2}')]), 9)}, SOURCE,
        ["data.jsonl:9", "speed", "fix:"]),
    "empty_file": ("a source with no rows", {"data.jsonl": []}, SOURCE, ["data.jsonl", "no rows", "fix:"]),
    "blank_lines_only": ("a source with only blank lines", {"data.jsonl": ["", "  ", ""]}, SOURCE,
                         ["data.jsonl", "no rows", "fix:"]),
    "every_row_a_duplicate": ("one row repeated", {"data.jsonl": [json.dumps(row(0))] * 12}, SOURCE,
                              ["data.jsonl", "only 1 distinct valid rows", "11 duplicates", "fix:"]),
    "row_in_two_sources": ("leakage: the same row in two files", {"data.jsonl": good_rows(),
                                                                 "more.jsonl": [json.dumps(row(100)),
                                                                                json.dumps(row(3))]},
                           {"data": {"sources": [{"path": "data.jsonl"}, {"path": "more.jsonl"}]}},
                           ["more.jsonl:2", "also appears in data.jsonl:4", "fix:"]),
    "split_ratios_not_one": ("ratios sum to 1.2", {"data.jsonl": good_rows()},
                             {"data": {"sources": [{"path": "data.jsonl"}],
                                       "split": {"train": 0.8, "val": 0.3, "test": 0.1}}},
                             ["data.split", "sum to 1.2", "fix:"]),
    "no_test_rows_for_specialist": ("test ratio 0 leaves no test rows", {"data.jsonl": good_rows()},
                                    {"data": {"sources": [{"path": "data.jsonl"}],
                                              "split": {"train": 0.9, "val": 0.1, "test": 0.0}}},
                                    ["data.split", "no test rows", "fix:"]),
    "focus_tool_never_occurs": ("a focus tool with no examples", {"data.jsonl": good_rows()},
                                {**SOURCE,
                                 "specialists": {"runner": {"focus_tools": ["mesen2.run",
                                                                            "mesen2.explode"]}}},
                                ["specialists.runner.focus_tools", "mesen2.explode", "never occurs", "fix:"]),
    "specialist_name_with_slash": ("a name that would escape results/", {"data.jsonl": good_rows()},
                                   {**SOURCE, "specialists": {"team/runner": {}}},
                                   ["specialists.team/runner", "not allowed", "fix:"]),
    "specialist_name_dotdot": ("a name '..'", {"data.jsonl": good_rows()},
                               {**SOURCE, "specialists": {"..": {}}},
                               ["specialists...", "not allowed", "fix:"]),
    "missing_base_model_path": ("base model directory absent", {"data.jsonl": good_rows()},
                                {**SOURCE, "base_model": {"name_or_path": "./models/not-there"}},
                                ["base_model.name_or_path", "does not exist", "fix:"]),
    "base_model_only_pickles": ("a model directory with .bin weights only",
                                {"data.jsonl": good_rows(), "model/config.json": ['{"model_type": "qwen2"}'],
                                 "model/pytorch_model.bin": b"not really a pickle"},
                                {**SOURCE, "base_model": {"name_or_path": "./model"}},
                                ["model", "pytorch_model.bin", "safetensors only", "fix:"]),
    "unsupported_gguf_architecture": ("a gpt2 base with export on",
                                      {"data.jsonl": good_rows(),
                                       "gpt2/config.json": ['{"model_type": "gpt2"}'],
                                       "gpt2/model.safetensors": b"placeholder"},
                                      {**SOURCE, "base_model": {"name_or_path": "./gpt2"},
                                       "export": {"enabled": True}},
                                      ["base_model.name_or_path", "'gpt2'", "llama", "qwen2", "fix:"]),
    "non_utf8_bytes": ("Latin-1 bytes in a row", {"data.jsonl": "\n".join(good_rows(6)).encode() + b"\n"
                                                  + b'{"instruction": "caf\xe9", "output": "x"}\n'}, SOURCE,
                       ["data.jsonl:7", "UTF-8", "fix:"]),
    "huge_single_line": ("a 50 MB line", {"data.jsonl": "GENERATE:huge_line"}, SOURCE,
                         ["data.jsonl:2", "MiB", "limit", "fix:"]),
    "misspelt_config_key": ("data.spilt", {"data.jsonl": good_rows()},
                            {"data": {"sources": [{"path": "data.jsonl"}], "spilt": {"seed": 3}}},
                            ["data.spilt", "unknown config key", "did you mean 'split'"]),
    "misspelt_train_key": ("defaults.train.epocs", {"data.jsonl": good_rows()},
                           {**SOURCE, "defaults": {"train": {"epocs": 2}}},
                           ["defaults.train.epocs", "unknown config key", "did you mean 'epochs'"]),
    "wrong_config_type": ("lr given as text", {"data.jsonl": good_rows()},
                          {**SOURCE,
                           "specialists": {"runner": {"focus_tools": ["mesen2.run"],
                                                      "train": {"lr": "fast"}}}},
                          ["specialists.runner.train.lr", "not of type", "fix:"]),
    "bad_enum_value": ("on_invalid: ignore", {"data.jsonl": good_rows()},
                      {"data": {"sources": [{"path": "data.jsonl"}], "on_invalid": "ignore"}},
                      ["data.on_invalid", "'ignore' is not one of", "fix: use one of: error, skip"]),
    "missing_source_file": ("a source path that does not exist", {},
                            {"data": {"sources": [{"path": "nope.jsonl"}]}},
                           ["data.sources[0].path", "nope.jsonl", "does not exist", "fix:"]),
    "last_turn_not_assistant": ("a row ending with the user", {"data.jsonl": with_line(
        row(0,
            messages=[{"role": "assistant", "content": "hi"},
                      {"role": "user", "content": "run"}]), 3)}, SOURCE,
        ["data.jsonl:3", "messages[1].role", "fix:"]),
    "empty_assistant_turn": ("assistant with no content and no calls", {"data.jsonl": with_line(
        assistant(content=""), 3)}, SOURCE, ["data.jsonl:3", "neither content nor tool_calls", "fix:"]),
    "tool_defined_twice": ("two definitions of one tool",
                           {"data.jsonl": with_line(row(1, tools=[RUN, RUN]), 3)}, SOURCE,
                           ["data.jsonl:3", "defined twice", "fix:"]),
    "invalid_parameters_schema": ("a tool's parameters is not a JSON Schema", {"data.jsonl": with_line(row(
        1,
        tools=[{"type": "function",
                "function": {"name": "mesen2.run", "parameters": {"type": "strnig"}}}]), 3)},
        SOURCE, ["data.jsonl:3", "tools[0].function.parameters", "fix:"]),
    "instruction_without_output": ("an instruction row with no output", {"data.jsonl": with_line(
        {"instruction": "Explain LDA"}, 2)}, SOURCE, ["data.jsonl:2", "output", "missing", "fix:"]),
    "row_is_a_list": ("a line holding a JSON array", {"data.jsonl": with_line([1, 2], 2)}, SOURCE,
                      ["data.jsonl:2", "not an object", "fix:"]),
    "quantization_4bit_without_bitsandbytes": (
        "quantization: 4bit where bitsandbytes cannot be imported (a shim package on PYTHONPATH stands in "
        "for a machine whose bitsandbytes is missing or broken)",
        {"data.jsonl": good_rows(),
         "shim/bitsandbytes/__init__.py": [
             'raise ImportError("bitsandbytes cannot run here (bad-input corpus shim)")']},
        {**SOURCE, "tiny_base": TINY_BASE, "defaults": {"train": {"quantization": "4bit"}}},
        ["config/config.yaml", "train.quantization", "bitsandbytes", "fix:", "quantization: none"]),
    # ---- issue 14: formats, input hygiene, skipped rows, user config files
    "nan_in_arguments": ("NaN inside an arguments string (not JSON: RFC 8259)", {"data.jsonl": with_line(
        assistant(content=None, tool_calls=[call(arguments='{"frames": NaN}')]), 4)}, SOURCE,
        ["data.jsonl:4", "messages[1].tool_calls[0].function.arguments.frames", "NaN is not valid JSON",
         "fix:"]),
    "infinity_in_a_row": ("Infinity as a JSON value of the row", {"data.jsonl": with_line(
        '{"instruction": "Run", "output": "ok", "weight": Infinity}', 3)}, SOURCE,
        ["data.jsonl:3", "weight", "Infinity is not valid JSON", "fix:"]),
    "invalid_uncalled_tool_schema": ("a tool the row does not call has an invalid parameters schema", {
        "data.jsonl": with_line(row(1, tools=[RUN, {"type": "function", "function": {
            "name": "mesen2.load_rom", "parameters": {"type": "object", "required": "path"}}}]), 3)}, SOURCE,
        ["data.jsonl:3", "tools[1].function.parameters", "mesen2.load_rom", "invalid parameters schema",
         "fix:"]),
    "python_types_in_schema": ("a BFCL-style Python type in a chat row's schema", {
        "data.jsonl": with_line(row(1, tools=[{"type": "function", "function": {"name": "mesen2.run",
            "parameters": {"type": "dict", "properties": {"frames": {"type": "integer"}}}}}]), 3)}, SOURCE,
        ["data.jsonl:3", "tools[0].function.parameters", "dict -> object", "format: bfcl"]),
    "unknown_row_shape": ("prompt/completion rows", {
        "data.jsonl": with_line({"prompt": "Run", "completion": "ok"}, 2)}, SOURCE,
        ["data.jsonl:2", "unknown row shape (keys: completion, prompt)", "chat", "sharegpt", "instruction",
         "axolotl", "bfcl", "fix:"]),
    "enum_list_not_cut": ("a value outside a long enum", {"data.jsonl": with_line(row(1, tools=[
        {"type": "function", "function": {"name": "mesen2.run", "parameters": {
            "type": "object",
            "properties": {"frames": {"enum": [f"{n} frames of the attract-mode demo"
                                               for n in range(1, 25)]}}}}}]),
        3)},
        SOURCE, ["data.jsonl:3", "function.arguments.frames", "'1 frames of the attract-mode demo'",
                 "'24 frames of the attract-mode demo']", "fix:"]),
    "skip_with_too_few_rows": ("on_invalid: skip leaves two rows: the skipped ones are still written", {
        "data.jsonl": [json.dumps(row(0)),
                       json.dumps(assistant(content=None, tool_calls=[call(name="mesen2.nope")])),
                       json.dumps(row(1)), '{"messages": 7}']},
        {"data": {"sources": [{"path": "data.jsonl"}], "on_invalid": "skip"}},
        ["data.jsonl", "only 2 distinct valid rows", "2 skipped rows",
         "logs/data/prepare_data.rejected.jsonl"]),
    "sharegpt_turns_out_of_order": ("two human turns in a row (LLaMA-Factory would skip the row silently)", {
        "data.jsonl": good_rows(4) + [json.dumps({"conversations": [
            {"from": "human", "value": "Run 3 frames"}, {"from": "human", "value": "please"},
            {"from": "function_call", "value": '{"name": "mesen2.run", "arguments": {"frames": 3}}'}],
            "tools": json.dumps([RUN["function"]])})]}, SOURCE,
        ["data.jsonl:5", "conversations[1].from", "'human' at this position", "fix:"]),
    "axolotl_option_misspelt": ("options.field_mesages", {"data.jsonl": good_rows()},
                                {"data": {"sources": [{"path": "data.jsonl", "format": "axolotl",
                                                       "options": {"field_mesages": "conversations"}}]}},
                                ["config/config.yaml", "data.sources[0].options.field_mesages",
                                 "did you mean 'field_messages'"]),
    "bfcl_without_answers": ("format: bfcl without its possible_answer file", {"data.jsonl": good_rows()},
                             {"data": {"sources": [{"path": "data.jsonl", "format": "bfcl"}]}},
                             ["data.sources[0].answers", "possible_answer file", "fix:"]),
    "possible_answer_disagrees": ("the row's call is not among its acceptable answers", {
        "data.jsonl": with_line(row(2, possible_answer=[
            {"name": "mesen2.run", "arguments": {"frames": [30, 60]}}]), 3)}, SOURCE,
        ["data.jsonl:3", "possible_answer[0].arguments.frames", "not among its acceptable values", "fix:"]),
    "eval_only_row_also_in_training": ("a held-out (split: test) row that is also a training row", {
        "data.jsonl": good_rows(), "bench.jsonl": [json.dumps(row(200)), json.dumps(row(7))]},
        {"data": {"sources": [{"path": "bench.jsonl", "split": "test"}, {"path": "data.jsonl"}]}},
        ["data.jsonl:8", "also appears in bench.jsonl:2", "fix:"]),
    "ast_target_without_bfcl_scoring": (
        "a BFCL AST accuracy target while eval.scoring is strict (the default)", {},
        {"eval": {"targets": {"ast_accuracy": 0.5}}},
        ["eval.targets.ast_accuracy", "ast_accuracy is computed only by bfcl scoring",
         "fix: set eval.scoring: bfcl"]),
    "unknown_benchmark": (
        "eval.benchmarks names BFCL's leaderboard column instead of a v4 category", {},
        {"eval": {"benchmarks": ["bfcl_simple"]}},
        ["eval.benchmarks[0]", "'bfcl_simple' is not one of", "fix: use one of: bfcl_simple_python"]),
    "user_config_misspelt_key": ("a misspelt key in the user's --configfile", {
        "data.jsonl": good_rows(), "my.yaml": ["data: {spilt: {seed: 3}}"]}, SOURCE,
        ["my.yaml", "data.spilt", "unknown config key", "did you mean 'split'"]),
    "user_config_focus_tool_never_occurs": ("the user's file names a focus tool the data never calls", {
        "data.jsonl": good_rows(),
        "my.yaml": ["specialists:", "  debugger: {focus_tools: [mesen2.explode]}"]},
        SOURCE, ["my.yaml", "specialists.debugger.focus_tools", "'mesen2.explode' never occurs", "fix:"]),
    "gguf_base_undequantizable": ("a GGUF base whose weights are Q8_K, which transformers cannot dequantize",
                                  {"data.jsonl": good_rows(), "model.Q8_K.gguf": "GENERATE:gguf"},
                                  {**SOURCE, "base_model": {"gguf_file": "model.Q8_K.gguf"}},
                                  ["model.Q8_K.gguf", "base_model.gguf_file", "llama GGUF (MOSTLY_Q4_K_M)",
                                   "cannot dequantize tensors of type Q8_K", "fix:"]),
    "gguf_base_cut_short": ("a GGUF base cut short (one part of a split file)",
                            {"data.jsonl": good_rows(), "model.gguf": "GENERATE:gguf_part"},
                            {**SOURCE, "base_model": {"gguf_file": "model.gguf"}},
                            ["model.gguf", "base_model.gguf_file", "is cut short", "tensor table needs",
                             "fix:"]),
}


def small_gguf(quantized: bool) -> bytes:
    """A tiny Llama-shaped GGUF: token_embd in Q8_K (raw blocks) or F32; gguf and numpy are in the lock."""
    import tempfile

    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        writer = GGUFWriter(str(path), "llama")
        writer.add_name("bad-input")
        writer.add_block_count(1)
        writer.add_file_type(LlamaFileType.MOSTLY_Q4_K_M if quantized else LlamaFileType.ALL_F32)
        for name in ("output_norm.weight", "blk.0.attn_norm.weight"):
            writer.add_tensor(name, np.ones(256, dtype=np.float32))
        if quantized:
            writer.add_tensor("token_embd.weight", np.zeros((256, 292), dtype=np.uint8),
                              raw_dtype=GGMLQuantizationType.Q8_K)
        else:
            writer.add_tensor("token_embd.weight", np.ones((256, 256), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()

# Extra keys of a case.yaml:
#   env: variables for the run ({workdir} stands for its directory; PYTHONPATH is prepended to the caller's)
#   prepare: targets built before the run (their files are not "new"); target: what the run asks for
#   args: more command-line arguments (after the target); leaves: {file: [pieces]} the failed run leaves
EXTRA = {
    "skip_with_too_few_rows": {"leaves": {"logs/data/prepare_data.rejected.jsonl": [
        '"line": 2', "messages[1].tool_calls[0].function.name", '"line": 4', '"fix": ']}},
    "user_config_misspelt_key": {"args": ["--configfile", "my.yaml"]},
    "user_config_focus_tool_never_occurs": {"args": ["--configfile", "my.yaml"]},
    # stopped by the header check in rule gguf_base, before transformers dequantizes anything
    "gguf_base_undequantizable": {"target": "results/base/gguf/model.Q8_K"},
    "gguf_base_cut_short": {"target": "results/base/gguf/model"},
    "quantization_4bit_without_bitsandbytes": {
        "env": {"PYTHONPATH": "{workdir}/shim"},
        "prepare": ["results/data/split_stats.json", "results/base/tiny"],
        "target": "results/adapters/runner",
    },
}

BASE_CONFIG = {
    "data": {"demo": {"enabled": False}, "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 1}},
    "specialists": {"runner": {"focus_tools": ["mesen2.run"]}},
    "export": {"enabled": False},
}


def main() -> None:
    for old in HERE.iterdir():
        if old.is_dir() and (old / "case.yaml").exists():
            shutil.rmtree(old)
    for name, (what, files, config, expect) in CASES.items():
        case = HERE / name
        case.mkdir()
        for fname, content in files.items():
            target = case / "files" / fname
            target.parent.mkdir(parents=True, exist_ok=True)
            if content in ("GENERATE:gguf", "GENERATE:gguf_part"):  # binary, built here (not in CASES)
                data = small_gguf(quantized=content == "GENERATE:gguf")
                content = data if content == "GENERATE:gguf" else data[:-4096]
            if isinstance(content, bytes):
                target.write_bytes(content)
            elif isinstance(content, str):
                target.write_text(content)
            else:
                target.write_text("".join(line + "\n" for line in content))
        (case / "case.yaml").write_text(yaml.safe_dump(
            {"what": what, "config": config, "expect": expect, **EXTRA.get(name, {})}, sort_keys=False,
            allow_unicode=True))
    (HERE / "base_config.yaml").write_text(yaml.safe_dump(BASE_CONFIG, sort_keys=False))
    print(f"{len(CASES)} cases written")


if __name__ == "__main__":
    main()
