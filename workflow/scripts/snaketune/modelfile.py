"""The Ollama Modelfile of a specialist, so that Ollama runs its GGUF as training rendered the chats.

The Modelfile names the GGUF, the chat format as an Ollama (Go) template, a stop for the format's
end-of-turn token and the eos, and the specialist's system prompt. Ollama does not run Jinja, so the
template is the Go twin of the format (snaketune.chat_format): the project's ChatML template
(snaketune/chat_template.jinja), or a turn-based format's own markers around the same <tools> block and
<tool_call> lines. Ollama writes tool JSON compactly where transformers writes ``", "`` separators, gives
each tool result a turn of its own, and adds the bos itself (add_bos_token); everything else renders alike.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import SnaketuneError
from .files import atomic_path

__all__ = [
    "CHATML_TOOLS_TEMPLATE", "turns_go_template", "ollama_template", "end_of_turn_tokens", "modelfile_text",
    "write_modelfile"
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


def turns_go_template(turns) -> str:
    """The Go twin of chat_format.turns_template for ``turns`` (a chat_format.Turns), without the bos."""
    from .chat_format import TOOLS_HEAD, TOOLS_TAIL

    # $. (the template's data) also inside the range over the messages
    system_block = ('{{ if $.System }}{{ $.System }}{{ if $.Tools }}\n\n{{ end }}{{ end }}{{ if $.Tools }}'
                    + TOOLS_HEAD + '{{ range $.Tools }}\n{"type": "function", "function": {{ .Function }}}'
                    '{{ end }}' + TOOLS_TAIL + '{{ end }}')
    user, assistant, end = turns.user, turns.assistant, turns.end
    fold = turns.system is None
    parts = ["{{ if .Messages }}"]
    if fold:
        parts.append("{{ $pending := false }}{{ if or .System .Tools }}{{ $pending = true }}{{ end }}")
    else:
        parts.append("{{ if or .System .Tools }}" + turns.system + system_block + end + "{{ end }}")
        parts.append("{{ $pending := false }}")
    pending_turn = "{{ if $pending }}" + user + system_block + end + "{{ $pending = false }}{{ end }}"
    parts += [
        "{{ range $i, $msg := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}",
        '{{ if eq $msg.Role "user" }}' + user
        + "{{ if $pending }}" + system_block + turns.fold + "{{ $pending = false }}{{ end }}"
        + "{{ $msg.Content }}" + end,
        '{{ else if eq $msg.Role "assistant" }}' + pending_turn + assistant + "{{ $msg.Content }}"
        + "{{ range $j, $call := $msg.ToolCalls }}{{ if or $msg.Content $j }}\n{{ end }}<tool_call>\n"
        + '{"name": "{{ $call.Function.Name }}", "arguments": {{ $call.Function.Arguments }}}\n</tool_call>'
        + "{{ end }}{{ if not $last }}" + end + "{{ end }}",
        '{{ else if eq $msg.Role "tool" }}' + pending_turn + user
        + "<tool_response>\n{{ $msg.Content }}\n</tool_response>" + end + "{{ end }}",
        '{{ if and (ne $msg.Role "assistant") $last }}' + pending_turn + assistant + "{{ end }}",
        "{{ end }}{{ else }}",
    ]
    if fold:
        parts.append("{{ if .Prompt }}" + user + "{{ if .System }}{{ .System }}" + turns.fold + "{{ end }}"
                     "{{ .Prompt }}" + end + "{{ end }}")
    else:
        parts.append("{{ if .System }}" + turns.system + "{{ .System }}" + end + "{{ end }}"
                     "{{ if .Prompt }}" + user + "{{ .Prompt }}" + end + "{{ end }}")
    parts.append(assistant + "{{ end }}{{ .Response }}{{ if .Response }}" + turns.end_of_turn + "{{ end }}")
    return "".join(parts)


def ollama_template(chat_format, path=None) -> str:
    """The Go template for a chat format: the project's ChatML twin, a turn-based format's own, or the
    ChatML twin for a native ChatML template with Qwen2.5-style tools; other native templates have none."""
    from .chat_format import CHATML

    turns, template = chat_format.turns, chat_format.template
    chatml_tools = all(marker in template for marker in ("<|im_start|>", "<|im_end|>", "<tool_call>"))
    if turns == CHATML or (turns is None and chatml_tools):
        return CHATML_TOOLS_TEMPLATE
    if turns is not None:
        return turns_go_template(turns)
    raise SnaketuneError(path, f"the base's own chat template ({chat_format.name}) has no Ollama twin here",
                         field="chat_template",
                         fix="set base_model.chat_template to a family (chatml, gemma), or write the "
                             "Modelfile by hand")


def end_of_turn_tokens(merged_dir) -> list[str]:
    """The chat format's end-of-turn token, the tokenizer's eos and every eos id of the generation config,
    as text (in that order)."""
    from transformers import AutoTokenizer

    from .chat_format import load_format

    merged_dir = Path(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    fmt = load_format(merged_dir, tokenizer)
    ids = list(fmt.stop_ids(tokenizer))
    gen_path = merged_dir / "generation_config.json"
    if gen_path.is_file():
        eos = json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id")
        ids.extend(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    tokens = []
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
    from .chat_format import FORMAT_FILE, load_format

    template = ollama_template(load_format(merged_dir), Path(merged_dir) / FORMAT_FILE)
    text = modelfile_text(Path(gguf_path).name, template, end_of_turn_tokens(merged_dir), system_prompt, name)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text
