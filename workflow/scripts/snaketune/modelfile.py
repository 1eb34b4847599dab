"""The Ollama Modelfile of a specialist, so that Ollama runs its GGUF as training rendered the chats.

The Modelfile names the GGUF, the chat template as an Ollama (Go) template, a stop for every
end-of-turn token, and the specialist's system prompt. Ollama does not run Jinja, so the template is
the Go rendering of the shared ChatML template (snaketune/chat_template.jinja): same turns, same
<tools> block, same <tool_call> lines. Ollama writes tool JSON compactly where transformers writes
``", "`` separators; everything else renders alike.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import SnaketuneError
from .files import atomic_path

__all__ = [
    "CHATML_TOOLS_TEMPLATE", "ollama_template", "end_of_turn_tokens", "modelfile_text", "write_modelfile"
]

# The Go twin of chat_template.jinja (ChatML + Qwen2.5-style tools), shaped like Ollama's qwen2.5 template.
CHATML_TOOLS_TEMPLATE = '''{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ if .Tools }}

{{ end }}{{ end }}
{{- if .Tools }}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>{{ end }}<|im_end|>
{{ end }}
{{- range $i, $msg := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq $msg.Role "user" }}<|im_start|>user
{{ $msg.Content }}<|im_end|>
{{ else if eq $msg.Role "assistant" }}<|im_start|>assistant
{{ $msg.Content }}
{{- range $j, $call := $msg.ToolCalls }}
{{- if or $msg.Content $j }}
{{ end }}<tool_call>
{"name": "{{ $call.Function.Name }}", "arguments": {{ $call.Function.Arguments }}}
</tool_call>
{{- end }}
{{- if not $last }}<|im_end|>
{{ end }}
{{- else if eq $msg.Role "tool" }}<|im_start|>user
<tool_response>
{{ $msg.Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne $msg.Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}'''  # noqa: E501 (the template's own lines)


def ollama_template(chat_template: str | None, path=None) -> str:
    """The Go template for a Jinja chat template; only the ChatML family has one."""
    if not chat_template or "<|im_start|>" not in chat_template or "<|im_end|>" not in chat_template:
        raise SnaketuneError(path, "the chat template is not ChatML; the Modelfile writer has no Ollama "
                             "template for it", field="chat_template",
                             fix="keep the shared template (snaketune/chat_template.jinja) on the tokenizer")
    return CHATML_TOOLS_TEMPLATE


def end_of_turn_tokens(merged_dir) -> list[str]:
    """<|im_end|>, the tokenizer's eos and every eos id of the generation config, as text (in that order)."""
    from transformers import AutoTokenizer

    merged_dir = Path(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    ids = []
    gen_path = merged_dir / "generation_config.json"
    if gen_path.is_file():
        eos = json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id")
        ids.extend(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    tokens = ["<|im_end|>"] if "<|im_end|>" in tokenizer.get_vocab() else []
    for token in tokenizer.convert_ids_to_tokens([int(i) for i in ids]):
        if token and token not in tokens:
            tokens.append(token)
    return tokens


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise SnaketuneError(None, f"the {what} contains triple quotes, which a Modelfile cannot hold",
                             field=what, fix='remove the """ from it')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, template: str, stops: list[str], system_prompt: str = "",
                   name: str | None = None) -> str:
    lines = []
    if name:
        lines.append(f"# {name}: ollama create {name} -f {name}.Modelfile (run beside the GGUF)")
    lines.append(f"FROM ./{gguf_name}")
    lines.append(f"TEMPLATE {_quoted(template, 'chat template')}")
    if system_prompt:
        lines.append(f"SYSTEM {_quoted(system_prompt, 'system prompt')}")
    for stop in stops:
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def write_modelfile(out_path, gguf_path, merged_dir, system_prompt: str = "", name: str | None = None) -> str:
    """Write the Modelfile next to ``gguf_path`` (FROM is relative, so the pair can move together)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    template = ollama_template(tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
                               Path(merged_dir) / "chat_template.jinja")
    text = modelfile_text(Path(gguf_path).name, template, end_of_turn_tokens(merged_dir), system_prompt, name)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text
