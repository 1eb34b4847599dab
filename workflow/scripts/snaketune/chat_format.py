"""Chat formats: how one base model writes a conversation, resolved once from the base and the config.

A ``ChatFormat`` is a Jinja chat template plus what the rest of the pipeline needs to know about it: the
token that ends an assistant turn (the stop token), and whether tool-call arguments reach the template as
the data's JSON strings or as objects. Training, eval prompts, GGUF parity, the GGUF's
``tokenizer.chat_template`` and the Ollama Modelfile all render through the same format (``render``,
``encode``), and it travels with the adapter and the merged model as ``chat_format.json``.

Which format a base gets (``resolve_chat_format``):

* the embedded tiny base (its tokenizer carries ``chat_template.jinja``): that template, ``chatml``;
* a base whose own template renders tools and ``<tool_call>`` blocks the way
  ``apply_chat_template(messages, tools=...)`` does (Qwen2.5 / Qwen3, Hermes): its template as it is
  (``native``), with the arguments passed as objects, as such templates expect;
* a base whose template ignores tools (SmolLM2): the tools and ``<tool_call>`` blocks written as text
  inside the base's own turns, whose markers are read off the template by rendering probe
  conversations (``turns``; ChatML markers give the project template itself, ``chatml``);
* ``base_model.chat_template`` (a family name: ``chatml``, ``gemma``; or a ``.jinja`` file) instead of the
  base's own; a base without any template needs it (Gemma 3 pretrained: ``gemma``).

No token is ever added to a pretrained vocabulary: ``<tool_call>``, ``<tools>`` and ``<tool_response>`` are
plain text there (several pieces each); the end-of-turn marker must be one token of the vocabulary.

The assistant-only loss mask does not depend on ``{% generation %}``: the conversation is rendered up to
each assistant turn with the generation prompt, which must be a prefix of the full text (as text and as
token ids); what follows, up to and including the end-of-turn token, is what the assistant writes.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import SnaketuneError

__all__ = [
    "ChatFormat", "FormatError", "Turns", "CHATML", "GEMMA", "FAMILIES", "FORMAT_FILE", "TOOLS_HEAD",
    "TOOLS_TAIL", "project_format", "turns_template", "turns_format", "resolve_chat_format", "attach_format",
    "format_of", "save_tokenizer", "load_format", "renders_tools", "derive_turns", "token_id",
]

FORMAT_FILE = "chat_format.json"
PROJECT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")
ARGUMENT_KINDS = ("string", "object")
FIELD = "base_model.chat_template"
FIX = ("set base_model.chat_template to a family (chatml, gemma) or a .jinja file whose assistant turns end "
       "with one end-of-turn token")

# The tools block of every text-rendered format, as the project template (Qwen2.5's layout) writes it.
TOOLS_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
              "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
              "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
              "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")


class FormatError(ValueError):
    """A conversation the format cannot mask exactly (the caller names the row and the config key)."""


@dataclass(frozen=True)
class Turns:
    """A turn-based format's markers: each turn is ``start + content + end``.

    ``system`` is the start of a system turn, or None where the format has no system role (the system
    prompt and tools then open the first user turn, followed by ``fold``). ``end`` is the same for every
    role and begins with ``end_of_turn``, the one token that closes a turn.
    """

    user: str
    assistant: str
    end: str
    end_of_turn: str
    system: str | None = None
    bos: str = ""
    fold: str = "\n\n"


CHATML = Turns(user="<|im_start|>user\n", assistant="<|im_start|>assistant\n", end="<|im_end|>\n",
               end_of_turn="<|im_end|>", system="<|im_start|>system\n")
# Gemma 2 / 3: no system role (Google's template folds the system prompt into the first user turn), the
# assistant is ``model``, <bos> first.
GEMMA = Turns(user="<start_of_turn>user\n", assistant="<start_of_turn>model\n", end="<end_of_turn>\n",
              end_of_turn="<end_of_turn>", system=None, bos="<bos>")
FAMILIES = {"chatml": CHATML, "gemma": GEMMA}


@dataclass(frozen=True)
class ChatFormat:
    """A chat template and what rendering, masking and stopping need to know about it."""

    name: str          # chatml (the project template), gemma, turns, native
    template: str      # Jinja, as transformers' apply_chat_template runs it
    end_of_turn: str   # the token that ends an assistant turn: the stop token
    arguments: str = "string"  # tool-call arguments as the data's JSON strings, or parsed into objects
    source: str = "snaketune"  # where it came from: snaketune, base (its own template), config (the key)
    turns: Turns | None = None  # the markers of a turn-based format (what the Ollama template is made of)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()

    def record(self) -> dict:
        """What specialist_config.json and the eval JSON record of the format."""
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "end_of_turn": self.end_of_turn, "arguments": self.arguments}

    def to_json(self) -> dict:
        return {**asdict(self), "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict) -> ChatFormat:
        turns = Turns(**data["turns"]) if data.get("turns") else None
        return cls(**{k: data[k] for k in ("name", "template", "end_of_turn", "arguments", "source")},
                   turns=turns)

    # --- rendering ---------------------------------------------------------------------------

    def prepare(self, messages) -> list[dict]:
        """The messages as the template expects them (arguments parsed where it wants objects)."""
        messages = [dict(m) for m in messages or []]
        if self.arguments == "object":
            for message in messages:
                if message.get("tool_calls"):
                    message["tool_calls"] = [_object_arguments(call) for call in message["tool_calls"]]
        return messages

    def render(self, tokenizer, messages, tools=None, add_generation_prompt: bool = False) -> str:
        """The conversation as text (``tokenizer``: None for a template that needs no special tokens)."""
        messages = self.prepare(messages)
        if tokenizer is not None:
            return tokenizer.apply_chat_template(messages, tools=tools or None, chat_template=self.template,
                                                 add_generation_prompt=add_generation_prompt, tokenize=False)
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template([messages], tools=tools or None, chat_template=self.template,
                                            add_generation_prompt=add_generation_prompt)
        return rendered[0]

    def prompt(self, tokenizer, messages, tools=None) -> str:
        """The inference prompt: ``messages`` (no final assistant turn) and the generation prompt."""
        return self.render(tokenizer, messages, tools, add_generation_prompt=True)

    def assistant_spans(self, tokenizer, messages, tools=None) -> tuple[str, list[tuple[int, int]]]:
        """(full text, character spans of what each assistant turn writes, its end-of-turn token included).

        Raises FormatError where the template breaks the prefix property (the prompt before an assistant
        turn is not where its text starts) or does not end the turn with ``end_of_turn``.
        """
        full = self.render(tokenizer, messages, tools)
        spans = []
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            prompt = self.render(tokenizer, messages[:i], tools, add_generation_prompt=True)
            upto = self.render(tokenizer, messages[:i + 1], tools)
            if not full.startswith(prompt) or not upto.startswith(prompt) or not full.startswith(upto):
                raise FormatError(f"the {self.name} template renders the prompt before assistant turn {i} "
                                  "differently from the whole conversation (no prefix)")
            end = upto.rfind(self.end_of_turn, len(prompt))
            if end < 0:
                raise FormatError(f"assistant turn {i} does not end with {self.end_of_turn!r}")
            spans.append((len(prompt), end + len(self.end_of_turn)))
        return full, spans

    def encode(self, tokenizer, messages, tools=None, add_generation_prompt: bool = False) -> dict:
        """Token ids and the assistant mask (1 on every token an assistant turn writes, end-of-turn included).

        The mask comes from character spans (``assistant_spans``) mapped to tokens by their offsets, so it
        is exact for any template, with or without ``{% generation %}``.
        """
        if add_generation_prompt:
            text, spans = self.prompt(tokenizer, messages, tools), []
        else:
            text, spans = self.assistant_spans(tokenizer, messages, tools)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=bool(spans))
        ids = list(enc["input_ids"])
        if not spans:
            return {"input_ids": ids, "assistant_masks": [0] * len(ids)}
        for start, _ in spans:
            prefix = tokenizer(text[:start], add_special_tokens=False)["input_ids"]
            if ids[:len(prefix)] != list(prefix):
                raise FormatError("the prompt's tokens are not a prefix of the conversation's tokens (a "
                                  "token crosses the start of an assistant turn)")
        mask = [int(any(a <= begin < b for a, b in spans)) for begin, _ in enc["offset_mapping"]]
        return {"input_ids": ids, "assistant_masks": mask}

    def stop_ids(self, tokenizer) -> list[int]:
        """Ids that end a generated assistant turn: the end-of-turn token, then the tokenizer's eos."""
        ids = [token_id(tokenizer, self.end_of_turn)]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
            ids.append(tokenizer.eos_token_id)
        return [i for i in ids if i is not None]

    def stop_tokens(self, tokenizer) -> list[str]:
        return tokenizer.convert_ids_to_tokens(self.stop_ids(tokenizer))


def _object_arguments(call: dict) -> dict:
    call = copy.deepcopy(call)
    fn = call.get("function", call)
    if isinstance(fn.get("arguments"), str):
        try:
            fn["arguments"] = json.loads(fn["arguments"])
        except ValueError:
            pass  # the data stage refuses such rows; a template gets the text as it is
    return call


def token_id(tokenizer, text: str) -> int | None:
    """The id of ``text`` when it is exactly one token of the vocabulary (never the unknown token)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or (tokenizer.unk_token_id is not None and ids[0] == tokenizer.unk_token_id
                         and text != tokenizer.unk_token):
        return None
    return int(ids[0])


# --- the project template and generated ones -------------------------------------------------------

def project_format(source: str = "snaketune") -> ChatFormat:
    """The project's ChatML template with Qwen2.5-style tools (snaketune/chat_template.jinja)."""
    return ChatFormat("chatml", PROJECT_TEMPLATE_PATH.read_text(encoding="utf-8"), CHATML.end_of_turn,
                      "string", source, CHATML)


def _literal(text) -> str:
    """A Jinja string literal (Jinja reads Python escapes)."""
    return "none" if text is None else json.dumps(text, ensure_ascii=False)


TURNS_BODY = """\
{%- set sys = (messages[0].content or '') if messages and messages[0].role == 'system' else '' %}
{%- if tools %}
    {%- set ns = namespace(text=(sys + '\\n\\n' if sys else '') + TOOLS_HEAD) %}
    {%- for tool in tools %}
        {%- set ns.text = ns.text + '\\n' + (tool | tojson) %}
    {%- endfor %}
    {%- set sys = ns.text + TOOLS_TAIL %}
{%- endif %}
{{- BOS }}
{%- if SYSTEM is not none and sys %}
    {{- SYSTEM + sys + END }}
{%- endif %}
{%- set state = namespace(pending=(sys if SYSTEM is none else '')) %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {%- if message.role == 'system' and SYSTEM is not none %}
            {{- SYSTEM + (message.content or '') + END }}
        {%- else %}
            {{- USER + (state.pending + FOLD if state.pending else '') + (message.content or '') + END }}
            {%- set state.pending = '' %}
        {%- endif %}
    {%- elif message.role == 'assistant' or message.role == 'tool' %}
        {%- if state.pending %}
            {{- USER + state.pending + END }}
            {%- set state.pending = '' %}
        {%- endif %}
        {%- if message.role == 'assistant' %}
            {{- ASSISTANT }}
            {%- if message.content %}
                {{- message.content }}
            {%- endif %}
            {%- for tool_call in (message.tool_calls or []) %}
                {%- if tool_call.function is defined %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {%- if message.content or not loop.first %}
                    {{- '\\n' }}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
            {{- END }}
        {%- else %}
            {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
                {{- USER }}
            {%- else %}
                {{- '\\n' }}
            {%- endif %}
            {{- '<tool_response>\\n' + (message.content or '') + '\\n</tool_response>' }}
            {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
                {{- END }}
            {%- endif %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {%- if state.pending %}
        {{- USER + state.pending + END }}
    {%- endif %}
    {{- ASSISTANT }}
{%- endif %}"""


def turns_template(turns: Turns, name: str) -> str:
    """A Jinja template writing ``turns``' markers, with the project template's tools block and
    ``<tool_call>`` lines as text inside them (the system prompt and tools open the first user turn where
    the format has no system role)."""
    header = (f"{{#- snaketune chat format {name}: the base's own turns; tools and <tool_call> blocks as "
              "text inside them. -#}\n")
    values = {"BOS": turns.bos, "SYSTEM": turns.system, "USER": turns.user, "ASSISTANT": turns.assistant,
              "END": turns.end, "FOLD": turns.fold, "TOOLS_HEAD": TOOLS_HEAD, "TOOLS_TAIL": TOOLS_TAIL}
    sets = "".join(f"{{%- set {key} = {_literal(value)} %}}\n" for key, value in values.items())
    return header + sets + TURNS_BODY


def turns_format(turns: Turns, name: str, source: str) -> ChatFormat:
    if turns == CHATML:  # the project template renders exactly these turns
        return project_format(source)
    name = next((family for family, known in FAMILIES.items() if known == turns), name)
    return ChatFormat(name, turns_template(turns, name), turns.end_of_turn, "string", source, turns)


# --- what a template does --------------------------------------------------------------------------

PROBE_TOOL = {"type": "function", "function": {
    "name": "snaketune_probe_tool", "description": "A probe.",
    "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}
PROBE_CALL = {"type": "function", "function": {"name": "snaketune_probe_tool", "arguments": {"x": 7}}}


def _try_render(tokenizer, template: str, messages, tools=None, add_generation_prompt=False) -> str | None:
    try:
        return ChatFormat("probe", template, "").render(tokenizer, messages, tools, add_generation_prompt)
    except Exception:  # a template that cannot render the probe does not do what was asked of it
        return None


def renders_tools(tokenizer, template: str) -> bool:
    """Whether ``template`` shows tools to the model and writes calls as ``<tool_call>`` blocks
    (the ``apply_chat_template(messages, tools=...)`` convention of Qwen2.5 / Qwen3 and Hermes)."""
    user = {"role": "user", "content": "snaketune probe"}
    shown = _try_render(tokenizer, template, [user], [PROBE_TOOL], True)
    answer = {"role": "assistant", "content": "", "tool_calls": [PROBE_CALL]}
    called = _try_render(tokenizer, template, [user, answer], [PROBE_TOOL])
    if not shown or not called or "snaketune_probe_tool" not in shown:
        return False
    return called.count("<tool_call>") > shown.count("<tool_call>") and '"x": 7' in called


def _first_special(tokenizer, text: str) -> str | None:
    """The first token of ``text`` that is a special (control) token of the vocabulary."""
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    for tok in tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"]):
        if tok in specials:
            return tok
    return None


def derive_turns(tokenizer, template: str) -> Turns | None:
    """The turn markers of a template that writes turns as ``start + content + end``, read off the
    renderings of probe conversations; None where it does not (the caller then needs a family or a file)."""
    S, U1, A1, U2 = "SNAKETUNE_SYSTEM", "SNAKETUNE_USER_1", "SNAKETUNE_ASSISTANT_1", "SNAKETUNE_USER_2"
    user1, user2 = {"role": "user", "content": U1}, {"role": "user", "content": U2}
    assistant = {"role": "assistant", "content": A1}
    system = {"role": "system", "content": S}
    only_user = _try_render(tokenizer, template, [user1])
    prompt = _try_render(tokenizer, template, [user1], add_generation_prompt=True)
    answered = _try_render(tokenizer, template, [user1, assistant])
    chat = _try_render(tokenizer, template, [user1, assistant, user2])
    with_system = _try_render(tokenizer, template, [system, user1])
    if None in (only_user, prompt, answered, chat, with_system) or U1 not in only_user:
        return None
    cut = only_user.index(U1) + len(U1)
    user_end = only_user[cut:]
    if not prompt.startswith(only_user) or A1 not in answered or U2 not in chat:
        return None
    assistant_start = prompt[len(only_user):]
    assistant_end = answered[answered.index(A1) + len(A1):]
    between = chat[chat.index(A1) + len(A1):chat.index(U2)]
    if not assistant_end or assistant_end != user_end or not between.startswith(assistant_end):
        return None
    user_start = between[len(assistant_end):]
    eot = _first_special(tokenizer, assistant_end)
    if not user_start or not eot or not assistant_end.startswith(eot):
        return None
    # a bos written before the first turn (Gemma's <bos>), not one that starts every turn (SmolLM2's is
    # <|im_start|>)
    bos = tokenizer.bos_token or ""
    bos = bos if bos and with_system.startswith(bos) and not user_start.startswith(bos) else ""
    if S not in with_system:
        return None
    head = with_system[len(bos):with_system.index(S)]
    mid = with_system[with_system.index(S) + len(S):with_system.index(U1)]
    if head.startswith(user_start):  # folded into the first user turn
        return Turns(user=user_start, assistant=assistant_start, end=assistant_end, end_of_turn=eot,
                     system=None, bos=bos, fold=mid)
    if mid != user_end + user_start:
        return None
    return Turns(user=user_start, assistant=assistant_start, end=assistant_end, end_of_turn=eot,
                 system=head, bos=bos)


def _agrees(tokenizer, template: str, fmt: ChatFormat) -> bool:
    """Whether ``fmt`` writes tool-free conversations exactly as ``template`` does."""
    chats = [
        [{"role": "system", "content": "S."}, {"role": "user", "content": "U1."},
         {"role": "assistant", "content": "A1."}, {"role": "user", "content": "U2."}],
        [{"role": "system", "content": "S."}, {"role": "user", "content": "U1."}],
    ]
    for messages in chats:
        for gen in (False, True):
            own = _try_render(tokenizer, template, messages, add_generation_prompt=gen)
            ours = _try_render(tokenizer, fmt.template, messages, add_generation_prompt=gen)
            if own is None or own != ours:
                return False
    return True


def _native_end_of_turn(tokenizer, template: str) -> str | None:
    answered = _try_render(tokenizer, template, [{"role": "user", "content": "U."},
                                                 {"role": "assistant", "content": "SNAKETUNE_ANSWER"}])
    if not answered or "SNAKETUNE_ANSWER" not in answered:
        return None
    return _first_special(tokenizer, answered[answered.index("SNAKETUNE_ANSWER") + len("SNAKETUNE_ANSWER"):])


# --- resolving, attaching, saving ------------------------------------------------------------------

def _own_template(tokenizer) -> str | None:
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates (Hermes): the tool-use one where there is one
        template = template.get("tool_use") or template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def _configured(choice: str, config_path) -> tuple[str, str | None, Turns | None]:
    """(source label, template text or None, family turns or None) for base_model.chat_template."""
    if choice in FAMILIES:
        return "config", None, FAMILIES[choice]
    path = Path(choice).expanduser()
    if not path.is_file():
        raise SnaketuneError(config_path, f"chat template {choice!r} is neither a known family "
                             f"({', '.join(FAMILIES)}) nor a file", field=FIELD, fix=FIX)
    return "config", path.read_text(encoding="utf-8"), None


def resolve_chat_format(tokenizer, base_cfg: dict | None = None, *, config_path=None,
                        base_name: str | None = None) -> ChatFormat:
    """The chat format of a base (its tokenizer) under ``base_model`` of the config file ``config_path``.

    Raises a SnaketuneError (naming ``base_model.chat_template``) where the base has no template and the
    config gives none, where a template's turns cannot be read, or where the end-of-turn marker is not
    one token of the base's vocabulary (no token is ever added to a pretrained vocabulary).
    """
    choice = (base_cfg or {}).get("chat_template")
    base_name = base_name or (base_cfg or {}).get("name_or_path") or "the base"
    project = project_format()
    if choice:
        source, template, family = _configured(str(choice), config_path)
        if family is not None:
            fmt = turns_format(family, str(choice), source)
            return _checked(fmt, tokenizer, config_path, base_name)
    else:
        source, template = "base", _own_template(tokenizer)
        if template is None:
            raise SnaketuneError(config_path,
                                 f"{base_name} has no chat template (its tokenizer carries none)",
                                 field=FIELD, fix="set base_model.chat_template to the family the base "
                                                  "was trained on (chatml, gemma) or a .jinja file")
        if template == project.template:
            return _checked(project_format(source), tokenizer, config_path, base_name)
    if renders_tools(tokenizer, template):
        eot = _native_end_of_turn(tokenizer, template)
        if eot is None:
            raise SnaketuneError(config_path, f"the chat template of {base_name} renders tools, but no "
                                 "special token ends its assistant turn", field=FIELD, fix=FIX)
        return _checked(ChatFormat("native", template, eot, "object", source), tokenizer, config_path,
                        base_name)
    turns = derive_turns(tokenizer, template)
    fmt = turns_format(turns, "turns", source) if turns is not None else None
    if fmt is None or not _agrees(tokenizer, template, fmt):
        raise SnaketuneError(config_path, f"the chat template of {base_name} renders no tools and its turns "
                             "could not be read from it (start + content + one end-of-turn token)",
                             field=FIELD, fix=FIX)
    return _checked(fmt, tokenizer, config_path, base_name)


def _checked(fmt: ChatFormat, tokenizer, config_path, base_name: str) -> ChatFormat:
    if token_id(tokenizer, fmt.end_of_turn) is None:
        pieces = len(tokenizer(fmt.end_of_turn, add_special_tokens=False)["input_ids"])
        raise SnaketuneError(config_path, f"the {fmt.name} format ends turns with {fmt.end_of_turn!r}, "
                             f"which is not a token of {base_name}'s vocabulary ({pieces} pieces); snaketune "
                             "adds no tokens to a pretrained vocabulary", field=FIELD,
                             fix="choose the format the base was trained on (base_model.chat_template)")
    return fmt


ATTRIBUTE = "snaketune_chat_format"


def attach_format(tokenizer, fmt: ChatFormat):
    """The tokenizer with ``fmt`` as its chat template (saved with it) and as its chat format."""
    tokenizer.chat_template = fmt.template
    setattr(tokenizer, ATTRIBUTE, fmt)
    return tokenizer


def format_of(tokenizer) -> ChatFormat:
    """The format attached to ``tokenizer``; the project format where none is (tests, the tiny base)."""
    fmt = getattr(tokenizer, ATTRIBUTE, None) if tokenizer is not None else None
    return fmt if fmt is not None else project_format()


def save_tokenizer(tokenizer, out_dir) -> None:
    """The tokenizer (with its format's template) and ``chat_format.json`` into ``out_dir``."""
    fmt = format_of(tokenizer)
    tokenizer.save_pretrained(out_dir)
    (Path(out_dir) / FORMAT_FILE).write_text(json.dumps(fmt.to_json(), indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")


def load_format(model_dir, tokenizer=None) -> ChatFormat:
    """The format an adapter or merged directory was made with (its ``chat_format.json``), attached to
    ``tokenizer`` when given. A directory without one (made before formats existed) has the project's."""
    path = Path(model_dir) / FORMAT_FILE
    if path.is_file():
        try:
            fmt = ChatFormat.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as err:
            raise SnaketuneError(path, f"is not a chat format record ({err})",
                                 fix="rebuild the directory (snakemake --forcerun train)") from err
    else:
        fmt = project_format()
    if tokenizer is not None:
        attach_format(tokenizer, fmt)
    return fmt
