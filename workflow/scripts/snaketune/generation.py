"""Greedy generation for the eval stage: batched decoding that equals ``model.generate`` one prompt at a time.

``generate`` is what eval (and the benchmarks) call; ``generate_one_at_a_time`` is the plain reference it
must equal token for token (tests/test_eval.py) and the baseline of bench/eval_throughput.py.
"""

from __future__ import annotations

import functools

from .chat_template import stop_token_ids

__all__ = [
    "generate_one_at_a_time", "generate", "generate_left_padded", "DRAFT_TOKENS", "SharedPrefixDecoder"
]


def generate_one_at_a_time(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int):
    """The reference: ``model.generate`` greedy on one prompt at a time (no padding, no batching).

    Same return value and token counting as ``generate``.
    """
    import torch

    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    outputs, generated = [], 0
    with torch.inference_mode():
        for ids in prompt_ids:
            prompt = torch.tensor([ids])
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad)
            new = out[0, len(ids):].tolist()
            cut = next((k for k, tok in enumerate(new) if tok in stops), len(new))
            outputs.append(new[:cut])
            generated += min(cut + 1, len(new))
    return outputs, generated


def generate(model, tokenizer, prompt_ids: list[list[int]], *, batch_size: int, max_new_tokens: int,
             progress: bool = True) -> tuple[list[list[int]], int]:
    """Greedy decoding, at most ``batch_size`` prompts at a time, longest prompts first.

    Returns the generated ids per prompt (in the input order, stop token excluded) and the number of
    generated tokens (each output's tokens up to and including its stop token, at most
    ``max_new_tokens``).

    The prompts of one specialist share a long prefix (system prompt and tool list), so they go through
    ``SharedPrefixDecoder``: the common prefix is prefilled once and every row attends to that one copy
    (``_prefix_attention``); our own greedy loop over the model's forward verifies prompt-lookup drafts
    (what followed the same n-gram earlier in the prompt, the output or another row's output), several
    tokens per pass where that pays; a finished row leaves the batch and the next prompt takes its place.
    The outputs are those of ``model.generate`` one prompt at a time, token for token (tests/test_eval.py
    checks it; batched arithmetic differs from one prompt at a time in the last bits, as in any batched
    decoding, so an argmax near-tie could in principle go the other way), and the same on every run. A
    model it does not fit (encoder-decoder, sliding-window or linear-attention layers, an attention call
    it cannot serve, logits processors in the generation config, ...) goes through ``model.generate`` in
    left-padded batches instead.
    """
    from tqdm.auto import tqdm

    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    order = sorted(range(len(prompt_ids)), key=lambda i: (-len(prompt_ids[i]), i))
    results: dict[int, list[int]] = {}
    bar = tqdm(total=len(order), desc="generate", disable=not progress, mininterval=5)

    def done(i: int, new: list[int]) -> None:
        results[i] = new
        bar.update(1)

    decoder = SharedPrefixDecoder.for_model(model, prompt_ids, stops, pad, max_new_tokens)
    if decoder is not None:
        try:
            decoder.run(prompt_ids, order, batch_size, done)
        except _Unsupported:  # found out on the first forward pass, before any output
            pass
    rest = [i for i in order if i not in results]
    for start in range(0, len(rest), batch_size):
        batch = rest[start:start + batch_size]
        outputs = generate_left_padded(model, [prompt_ids[i] for i in batch], stops, pad, max_new_tokens)
        for i, new in zip(batch, outputs):
            results[i] = new
        bar.update(len(batch))
    bar.close()
    outputs: list[list[int]] = []
    generated = 0
    for i in range(len(prompt_ids)):
        new = results[i]
        cut = next((k for k, tok in enumerate(new) if tok in stops), len(new))
        outputs.append(new[:cut])
        generated += min(cut + 1, len(new))
    return outputs, generated


def generate_left_padded(model, seqs, stops, pad, max_new_tokens) -> list[list[int]]:
    """One batch through ``model.generate``, left padded: the fallback of ``generate``."""
    import torch

    device = _input_device(model)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                             use_cache=True, temperature=None, top_p=None, top_k=None)
    return [row[width:] for row in out.tolist()]


def _input_device(model):
    return model.get_input_embeddings().weight.device


class _Unsupported(Exception):
    """The model does not fit ``SharedPrefixDecoder``: ``generate`` falls back to ``model.generate``."""


_PREFIX_ATTENTION = "snaketune_shared_prefix"
DRAFT_TOKENS = 4  # prompt-lookup draft tokens verified per row and step, at most
_DRAFT_NGRAM = 3  # longest n-gram looked up (then shorter ones, down to 1); 2 or 3
# a forward pass's fixed cost in token slots: on one CPU thread with the tiny base a pass costs ~0.45 ms
# plus ~0.035-0.05 ms per row and token; 8 did best of 6-12 there (a GPU would want a much larger figure)
_PASS_COST_IN_SLOTS = 8.0
_PREFILL_PASS_COST_IN_SLOTS = 16.0  # the same for a prefill pass (its slots are cheaper: larger matmuls)
_HIT_DECAY = 0.8  # weight of a row's past draft hits in its hit-rate estimate
_SHARED_SCORES_MAX_QUERIES = 8  # query tokens per row up to which the prefix's scores are one matmul
# generation-config fields that would make model.generate's greedy choice differ from a plain argmax
_NEUTRAL_GENERATION = {"repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
                       "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0),
                       "bad_words_ids": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
                       "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
                       "sequence_bias": (None,),
                       "min_length": (None, 0), "min_new_tokens": (None, 0), "guidance_scale": (None, 1.0),
                       "exponential_decay_length_penalty": (None,), "watermarking_config": (None,)}
# attention arguments the shared-prefix attention does not implement
_ATTENTION_EXTRAS = ("position_bias", "alibi", "s_aux", "sinks", "softcap", "sliding_window",
                     "attention_chunk_size")


class _PrefixState:
    """What one forward pass hands to ``_prefix_attention`` through the model's attention kwargs."""

    def __init__(self, prefix, mask):
        # per layer (keys, values) of the shared prefix, each [1, kv_heads, P, dim]; or None
        self.prefix = prefix
        self.mask = mask  # [rows, 1, queries, columns]: additive float mask over the rows' own columns
        self.calls = 0


def _prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention over [shared prefix | the row's own columns] without a copy of the prefix per row.

    For a few queries per row, the scores against the prefix are one matmul for the whole batch (the
    prefix's keys are read once, not once per row) and one softmax covers both parts: ordinary attention
    over the concatenation. For a long block of queries (a prefill) the prefix is expanded over the rows
    and SDPA's fused kernel does it, which keeps the score matrices out of memory.
    """
    import torch

    state = kwargs.get("snaketune_prefix")
    if state is None:  # not one of ours
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    if (attention_mask is not state.mask or dropout or kwargs.get("is_causal") is False
            or any(kwargs.get(k) is not None for k in _ATTENTION_EXTRAS)
            or attention_mask.shape[-1] != key.shape[2] or query.shape[1] % key.shape[1]):
        raise _Unsupported("the model's attention call does not fit the shared-prefix attention")
    state.calls += 1
    rows, heads, q, dim = query.shape
    kv_heads, n = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = dim ** -0.5 if scaling is None else scaling
    if state.prefix is None or q > _SHARED_SCORES_MAX_QUERIES:
        mask = attention_mask.to(query.dtype)
        if state.prefix is not None:
            p_keys, p_values = state.prefix[module.layer_idx]
            key = torch.cat([p_keys.expand(rows, -1, -1, -1), key], dim=2)
            value = torch.cat([p_values.expand(rows, -1, -1, -1), value], dim=2)
            mask = torch.cat([mask.new_zeros(rows, 1, q, p_keys.shape[2]), mask.expand(rows, 1, q, n)],
                             dim=-1)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale,
                                                               enable_gqa=group > 1)
        return out.transpose(1, 2).contiguous(), None
    p_keys, p_values = state.prefix[module.layer_idx]
    p_len = p_keys.shape[2]
    # the query heads of one kv head together
    grouped = (query * scale).reshape(rows, kv_heads, group * q, dim)
    own = torch.matmul(grouped, key.transpose(2, 3)).view(rows, kv_heads, group, q, n)
    own = own.add_(attention_mask.unsqueeze(2)).view(rows, kv_heads, group * q, n)
    flat = grouped.transpose(0, 1).reshape(kv_heads, rows * group * q, dim)
    shared = torch.matmul(flat, p_keys[0].transpose(1, 2)).view(kv_heads, rows, group * q, p_len)
    probs = torch.softmax(torch.cat([shared.transpose(0, 1), own], dim=-1), dim=-1, dtype=torch.float32)
    probs = probs.to(value.dtype)
    out = torch.matmul(probs[..., p_len:], value)
    shared_probs = probs[..., :p_len].transpose(0, 1).reshape(kv_heads, rows * group * q, p_len)
    out += torch.matmul(shared_probs, p_values[0]).view(kv_heads, rows, group * q, dim).transpose(0, 1)
    return out.view(rows, heads, q, dim).transpose(1, 2).contiguous(), None


def _register_prefix_attention() -> None:
    from transformers import AttentionInterface

    if _PREFIX_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(_PREFIX_ATTENTION, _prefix_attention)


class _OwnColumnsStore:
    """Cache-layer behaviour for the rows' own columns (suffix, then output), preallocated for ``capacity``
    columns and ``row_capacity`` rows: no copy per step, rows leave and join in place.

    Mixed into transformers' ``DynamicLayer`` by ``_own_columns_layer`` (transformers is imported lazily).
    """

    def __init__(self, capacity: int, prefix_len: int, row_capacity: int = 0):
        super().__init__()
        self.capacity, self.prefix_len, self.row_capacity = capacity, prefix_len, row_capacity
        self.length = 0  # columns in use
        self.rows = 0  # rows in use

    def lazy_initialization(self, key_states, value_states):
        self.dtype, self.device = key_states.dtype, key_states.device
        rows = max(self.row_capacity, key_states.shape[0])
        self._keys = key_states.new_zeros((rows, key_states.shape[1], self.capacity, key_states.shape[3]))
        self._values = value_states.new_zeros((rows, value_states.shape[1], self.capacity,
                                               value_states.shape[3]))
        self.rows = key_states.shape[0]
        self.is_initialized = True

    def _reserve(self, end):
        if end > self._keys.shape[2]:  # grow (zeros: masked columns must never hold NaN)
            size = max(end, 2 * self._keys.shape[2])
            for name in ("_keys", "_values"):
                old = getattr(self, name)
                new = old.new_zeros(old.shape[:2] + (size, old.shape[3]))
                new[:, :, :self.length] = old[:, :, :self.length]
                setattr(self, name, new)

    def _views(self):
        self.keys = self._keys[:self.rows, :, :self.length]
        self.values = self._values[:self.rows, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[2]
        self._reserve(end)
        self._keys[:self.rows, :, start:end] = key_states
        self._values[:self.rows, :, start:end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self):
        return self.prefix_len + self.length

    def batch_select_indices(self, indices):
        self._keys, self._values = self._keys[indices], self._values[indices]
        self.rows = len(indices)
        self._views()

    def remove_rows(self, positions):
        """Drop rows: each in turn, highest first, takes the last row in its place (as ``_Batch`` does)."""
        for j in sorted(positions, reverse=True):
            last = self.rows - 1
            if j != last:
                self._keys[j, :, :self.length] = self._keys[last, :, :self.length]
                self._values[j, :, :self.length] = self._values[last, :, :self.length]
            self.rows = last
        self._views()

    def add_rows(self, keys, values, end):
        """Append rows (their keys and values) with their columns ending at column ``end``."""
        import torch

        if not self.is_initialized:
            self.lazy_initialization(keys[:0], values[:0])
        self._reserve(end)
        if end > self.length:  # the existing rows have nothing there: masked
            self.length = end
        first, last = self.rows, self.rows + keys.shape[0]
        if last > self._keys.shape[0]:  # more rows than planned
            self._keys, self._values = (torch.cat([store,
                                                   store.new_zeros((last - len(store),) + store.shape[1:])])
                                        for store in (self._keys, self._values))
        for store, part in ((self._keys, keys), (self._values, values)):
            store[first:last, :, :end - part.shape[2]] = 0
            store[first:last, :, end - part.shape[2]:end] = part
        self.rows = last
        self._views()


@functools.cache
def _own_columns_class():
    from transformers.cache_utils import DynamicLayer

    return type("OwnColumns", (_OwnColumnsStore, DynamicLayer), {})


def _own_columns_layer(capacity: int, prefix_len: int, row_capacity: int = 0):
    """A ``DynamicLayer`` that keeps the rows' own columns as ``_OwnColumnsStore`` describes."""
    return _own_columns_class()(capacity, prefix_len, row_capacity)


def _index_ngrams(index: dict, seq: list[int], start: int, value=None) -> None:
    """index[n-gram] = where its continuation starts, for the n-grams that end just before positions
    start..len(seq)-1 (so every indexed n-gram has a continuation). The value is that position, or
    (seq, position) for an index shared by several rows."""
    for i in range(max(start, 1), len(seq)):
        at = i if value is None else (value, i)
        for n in range(1, min(_DRAFT_NGRAM, i) + 1):
            index[tuple(seq[i - n:i])] = at


def _index_newest(index: dict, seq: list[int], value) -> None:
    """``_index_ngrams`` for the newest token of ``seq`` alone (the n-grams that end just before it)."""
    i = len(seq) - 1
    if i >= 3 and _DRAFT_NGRAM >= 3:
        index[(seq[i - 3], seq[i - 2], seq[i - 1])] = value
    if i >= 2:
        index[(seq[i - 2], seq[i - 1])] = value
    if i >= 1:
        index[(seq[i - 1],)] = value


def _draft(seq: list[int], own: dict, pool: dict, shared: dict, room: int) -> list[int]:
    """Prompt-lookup draft: what followed the latest earlier occurrence of the sequence's last n tokens,
    in its own prompt and output, in the other rows' outputs, or in the shared prefix."""
    if room <= 0:
        return []
    for n in range(min(_DRAFT_NGRAM, len(seq)), 0, -1):
        key = tuple(seq[-n:])
        at = own.get(key)
        if at is None:
            hit = pool.get(key)
            if hit is not None and hit[0] is not seq:
                source, start = hit
                return source[start:start + room]
            at = shared.get(key)
        if at is not None:
            draft: list[int] = []
            for k in range(room):  # may run on into the draft itself (a repeating output)
                draft.append(seq[at + k] if at + k < len(seq) else draft[at + k - len(seq)])
            return draft
    return []


def _draft_length(proposals: list[list[int]], hit_rates: list[list[float]]) -> int:
    """How many draft tokens a pass verifies: the most expected tokens per cost.

    A pass costs a fixed part plus one slot per row and token (every row pays the longest draft);
    a row's k-th draft token is taken with its estimated hit rate to the k-th power.
    """
    longest = max(map(len, proposals))
    if not longest:
        return 0
    gains = [0.0] * (longest + 1)  # expected tokens per pass, by draft length
    for proposal, (hits, seen) in zip(proposals, hit_rates):
        rate, term, total = hits / seen, 1.0, 1.0
        gains[0] += 1.0
        for k in range(1, longest + 1):
            if k <= len(proposal):
                term *= rate
                total += term
            gains[k] += total
    rows = len(proposals)
    return max(range(longest + 1), key=lambda k: gains[k] / (_PASS_COST_IN_SLOTS + rows * (k + 1)))


class SharedPrefixDecoder:
    """Greedy decoding of prompts that share a prefix; see ``generate``."""

    def __init__(self, model, config, prompt_ids, stops, pad, max_new_tokens, logits_to_keep: bool):
        import os

        self.model, self.config = model, config
        self.stops, self.pad, self.max_new = set(stops), pad, max_new_tokens
        self.logits_to_keep = logits_to_keep
        self.device = _input_device(model)
        shortest = min(len(p) for p in prompt_ids)
        self.prefix_len = min(len(os.path.commonprefix([list(p) for p in prompt_ids])), shortest - 1)
        self.stats = {"forward_passes": 0, "slots": 0, "drafted": 0, "accepted": 0}

    @classmethod
    def for_model(cls, model, prompt_ids, stops, pad, max_new_tokens):
        """The decoder, or None where the model's structure rules it out (the first forward checks more)."""
        import inspect

        from transformers.cache_utils import DynamicCache, DynamicLayer

        config = getattr(model, "config", None)
        if (max_new_tokens < 1 or not prompt_ids or min(len(p) for p in prompt_ids) < 1 or config is None
                or getattr(config, "is_encoder_decoder", False) or getattr(config, "sub_configs", None)
                or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager")):
            return None
        gen_config = getattr(model, "generation_config", None)
        if gen_config is not None and any(getattr(gen_config, key, None) not in neutral
                                          for key, neutral in _NEUTRAL_GENERATION.items()):
            return None
        try:
            layers = DynamicCache(config=config).layers
        except Exception:  # noqa: BLE001 - a config the cache cannot read: not ours to decode
            return None
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return None  # sliding-window, linear-attention or other special layers
        hf_model = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
        params = inspect.signature(hf_model.forward).parameters
        if not {"position_ids", "past_key_values", "attention_mask"} <= params.keys():
            return None
        _register_prefix_attention()
        return cls(model, config, prompt_ids, stops, pad, max_new_tokens, "logits_to_keep" in params)

    def _forward(self, **kwargs):
        keep = kwargs.pop("keep")
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = keep
        return self.model(use_cache=True, **kwargs).logits[:, -keep:]

    def _prefill_prefix(self, tokens: list[int]):
        import torch
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=self.config)
        self._forward(input_ids=torch.tensor([tokens], device=self.device), past_key_values=cache, keep=1)
        if any(layer.keys is None or layer.keys.shape[2] != len(tokens) for layer in cache.layers):
            raise _Unsupported("the prefix did not land in the cache")
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _new_cache(self, capacity: int, row_capacity: int = 0):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=self.config)
        cache.layers = [_own_columns_layer(capacity, self.prefix_len, row_capacity) for _ in cache.layers]
        return cache

    def _prefill_group(self, seqs, prefix):
        """``_prefill_rows`` for prompts sorted longest first, split where that saves padding slots worth
        more than a pass; the parts are put together right-aligned, as one prefill would have left them."""
        import torch

        widths = [len(s) - self.prefix_len for s in seqs]
        # best[i]: (slots, cuts) to prefill rows i.. ; a part starting at row i is as wide as row i
        best = [(0.0, [])] * (len(seqs) + 1)
        for i in range(len(seqs) - 1, -1, -1):
            best[i] = min(((j - i) * widths[i] + _PREFILL_PASS_COST_IN_SLOTS + best[j][0], [j] + best[j][1])
                          for j in range(i + 1, len(seqs) + 1))
        cuts = [0] + best[0][1]
        if len(cuts) == 2:
            return self._prefill_rows(seqs, prefix)
        cache, neg = self._new_cache(widths[0]), float("-inf")
        valid = torch.full((len(seqs), widths[0]), neg)
        first: list[int] = []
        for a, b in zip(cuts, cuts[1:]):
            part_cache, part_valid, part_first = self._prefill_rows(seqs[a:b], prefix)
            for layer, part_layer in zip(cache.layers, part_cache.layers):
                layer.add_rows(part_layer.keys, part_layer.values, widths[0])
            valid[a:b, widths[0] - part_valid.shape[1]:] = part_valid
            first += part_first
        return cache, valid, first

    def _prefill_rows(self, seqs, prefix):
        """Forward the prompts' own tokens (right-aligned after the shared prefix). Returns a cache of their
        columns, which of those columns are real (additive mask) and each row's first generated token."""
        import torch

        p_len, neg = self.prefix_len, float("-inf")
        width = max(len(s) for s in seqs) - p_len
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        positions = torch.full((len(seqs), width), p_len, dtype=torch.long)
        valid = torch.full((len(seqs), width), neg)
        for r, seq in enumerate(seqs):
            k = len(seq) - p_len
            ids[r, width - k:] = torch.tensor(seq[p_len:], dtype=torch.long)
            positions[r, width - k:] = torch.arange(p_len, len(seq))
            valid[r, width - k:] = 0
        mask = valid[:, None, None, :] + torch.full((width, width), neg).triu(1)
        mask.diagonal(dim1=-2, dim2=-1).fill_(0)  # a padding column attends to itself: no empty softmax
        cache = self._new_cache(width)
        state = _PrefixState(prefix, mask.to(self.device))
        logits = self._forward(input_ids=ids.to(self.device), position_ids=positions.to(self.device),
                               attention_mask=state.mask, past_key_values=cache, snaketune_prefix=state,
                               keep=1)
        if state.calls != len(cache.layers) or any(layer.length != width for layer in cache.layers):
            raise _Unsupported("the model's layers did not all go through the shared-prefix attention")
        return cache, valid, logits[:, -1].argmax(-1).tolist()

    def run(self, prompt_ids, order, batch_size, done) -> None:
        """Call ``done(prompt index, generated ids up to and including the stop token)`` as rows finish.

        At most ``batch_size`` rows decode at once; when rows finish, prompts waiting in line take their
        places (prefilled up to ``batch_size`` at a time, ahead of need).
        """
        import torch

        prefix_ids = list(prompt_ids[order[0]][:self.prefix_len])
        drafter = _Drafter(prefix_ids)
        batch = _Batch(self, prompt_ids, order, batch_size, drafter)
        previous = self.config._attn_implementation
        with torch.inference_mode():
            prefix = self._prefill_prefix(prefix_ids) if self.prefix_len else None
            self.config._attn_implementation = _PREFIX_ATTENTION
            try:
                while True:
                    for i, new in batch.take_verified():
                        done(i, new)
                    if batch.wants_rows():
                        batch.admit(prefix)
                        continue  # take the new rows' first tokens in
                    if not batch.live:
                        break
                    self._step(batch, drafter, prefix)
            finally:
                self.config._attn_implementation = previous

    def _step(self, batch: _Batch, drafter: _Drafter, prefix) -> None:
        """One forward pass: each row's newest token and its draft; the model's greedy choices verify them."""
        rooms = [min(DRAFT_TOKENS, self.max_new - len(batch.out[i]) - 1) for i in batch.live]
        proposals, drafts = drafter.drafts(batch.live, batch.seqs, rooms)
        q = 1 + max(map(len, drafts))
        step, positions, mask = batch.step_inputs(drafts, q, self.pad)
        state = _PrefixState(prefix, mask.to(self.device))
        logits = self._forward(input_ids=step.to(self.device), position_ids=positions.to(self.device),
                               attention_mask=state.mask, past_key_values=batch.cache, snaketune_prefix=state,
                               keep=q)
        guesses = logits.argmax(-1).tolist()
        batch.accept(guesses, drafts, q)
        drafter.score(batch.live, proposals, guesses)
        self.stats["forward_passes"] += 1
        self.stats["slots"] += len(batch.live) * q
        self.stats["drafted"] += sum(map(len, drafts))
        self.stats["accepted"] += sum(map(len, batch.verified)) - len(batch.verified)


class _Drafter:
    """Prompt-lookup drafts for the rows of one ``SharedPrefixDecoder.run``, and each row's hit rate.

    A row's proposal is what followed the latest earlier occurrence of its last n tokens (``_draft``);
    how much of it a pass verifies follows the rows' recent hit rates (``_draft_length``).
    """

    def __init__(self, prefix: list[int]):
        self.shared: dict = {}  # n-grams of the shared prefix
        _index_ngrams(self.shared, prefix, 1)
        self.pool: dict = {}  # n-grams of every row's output
        self.own: dict[int, dict] = {}  # per prompt: n-grams of its prompt and output
        self.hit_rate: dict[int, list[float]] = {}  # per prompt: decayed (first draft token right, proposals)

    def add(self, i: int, seq: list[int], prefix_len: int) -> None:
        """Start drafting for prompt ``i`` (its own n-grams, past the shared prefix)."""
        self.own[i], self.hit_rate[i] = {}, [0.5, 1.0]
        _index_ngrams(self.own[i], seq, prefix_len)

    def drop(self, i: int) -> None:
        del self.own[i], self.hit_rate[i]

    def took(self, i: int, seq: list[int], prompt_len: int) -> None:
        """Index the token just appended to prompt ``i``'s sequence; output tokens also go to the pool."""
        _index_newest(self.own[i], seq, len(seq) - 1)
        if len(seq) > prompt_len + 1:
            _index_newest(self.pool, seq, (seq, len(seq) - 1))

    def drafts(self, live: list[int], seqs: dict, rooms: list[int]) -> tuple[list[list[int]], list]:
        """(proposals, drafts): each live row's proposal, and the drafts one pass verifies (one length)."""
        proposals = [_draft(seqs[i], self.own[i], self.pool, self.shared, room)
                     for i, room in zip(live, rooms)]
        k = _draft_length(proposals, [self.hit_rate[i] for i in live])
        return proposals, [p[:k] for p in proposals]

    def score(self, live: list[int], proposals: list[list[int]], guesses: list[list[int]]) -> None:
        """Was each proposal's first token the model's own choice (whether it was drafted or not)?"""
        for i, proposal, g in zip(live, proposals, guesses):
            if proposal:
                rate = self.hit_rate[i]
                rate[0] = _HIT_DECAY * rate[0] + (proposal[0] == g[0])
                rate[1] = _HIT_DECAY * rate[1] + 1


class _Batch:
    """The rows one ``SharedPrefixDecoder.run`` decodes, and the prompts waiting for a row.

    Row j of the cache decodes prompt ``live[j]``. Every row has ``used`` own columns; ``valid`` is the
    additive mask over them (-inf: left padding, columns from before the row joined, rejected drafts).
    Waiting prompts are prefilled up to ``batch_size`` at a time, ahead of need (``reserve``).
    """

    def __init__(self, decoder: SharedPrefixDecoder, prompt_ids, order, batch_size: int, drafter: _Drafter):
        self.decoder, self.prompt_ids, self.drafter = decoder, prompt_ids, drafter
        self.batch_size = batch_size
        self.pending = list(reversed(order))  # pop() takes the next prompt
        # prefilled prompts waiting for a free row: [cache, valid, first tokens, prompt indices]
        self.reserve = None
        self.live: list[int] = []  # prompt indices of the rows being decoded, in the cache's row order
        self.verified: list[list[int]] = []  # per live row: the tokens the last pass confirmed, to take in
        self.seqs: dict[int, list[int]] = {}  # per prompt: prompt + output so far
        self.out: dict[int, list[int]] = {}  # per prompt: output so far
        self.cache = self.valid = None
        self.used = 0  # own columns so far

    def take_verified(self) -> list[tuple[int, list[int]]]:
        """Append the verified tokens to their rows; a row ends at its stop token or the token limit and
        leaves the batch. Returns (prompt index, output) of each row that ended."""
        keep, finished = [], []
        for j, i in enumerate(self.live):
            if self._extend(i, self.verified[j]):
                finished.append(i)
            else:
                keep.append(j)
        ended = []
        for i in finished:
            ended.append((i, self.out.pop(i)))
            del self.seqs[i]
            self.drafter.drop(i)
        if len(keep) < len(self.live):
            self._remove_rows(keep)
        self.verified = [[] for _ in self.live]
        return ended

    def _extend(self, i: int, tokens: list[int]) -> bool:
        """Take ``tokens`` into prompt ``i``'s output; True where the row ends."""
        seq, row_out, prompt_len = self.seqs[i], self.out[i], len(self.prompt_ids[i])
        for tok in tokens:
            row_out.append(tok)
            seq.append(tok)
            self.drafter.took(i, seq, prompt_len)
            if tok in self.decoder.stops or len(row_out) >= self.decoder.max_new:
                return True
        return False

    def _remove_rows(self, keep: list[int]) -> None:
        if not keep:
            self.cache = self.valid = None
            self.live, self.used = [], 0
            return
        gone = sorted(set(range(len(self.live))) - set(keep), reverse=True)
        for layer in self.cache.layers:
            layer.remove_rows(gone)
        for j in gone:  # as remove_rows does: the last row takes the place
            last = len(self.live) - 1
            if j != last:
                self.live[j] = self.live[last]
                self.valid[j, :self.used] = self.valid[last, :self.used]
            self.live.pop()

    def wants_rows(self) -> bool:
        """A row is free and a prompt is waiting for one."""
        return len(self.live) < self.batch_size and bool(self.pending or self.reserve)

    def admit(self, prefix) -> None:
        """Move prefilled prompts into the free rows (prefilling the next group first when none wait)."""
        import torch

        if self.reserve is None:
            self.reserve = self._prefill_next_group(prefix)
        r_cache, r_valid, r_first, r_group = self.reserve
        neg = float("-inf")
        take, width = min(self.batch_size - len(self.live), len(r_group)), r_valid.shape[1]
        end = max(self.used, width)  # the new rows' columns end where the others' do
        if self.cache is None:
            columns = end + self.decoder.max_new + 2 * (DRAFT_TOKENS + 1)
            self.cache = self.decoder._new_cache(columns, self.batch_size)
            self.valid = torch.full((self.batch_size, columns), neg)
        for layer, r_layer in zip(self.cache.layers, r_cache.layers):
            layer.add_rows(r_layer.keys[:take], r_layer.values[:take], end)
        if end > self.valid.shape[1]:
            self.valid = torch.cat([self.valid, self.valid.new_full((len(self.valid), end), neg)], dim=1)
        rows = len(self.live)
        self.valid[:rows, self.used:end] = neg  # the rows there have nothing in these columns
        self.valid[rows:rows + take] = neg
        self.valid[rows:rows + take, end - width:end] = r_valid[:take]
        self.used = end
        self.live += r_group[:take]
        self.verified += [[tok] for tok in r_first[:take]]
        if take == len(r_group):
            self.reserve = None
        else:
            rest = torch.arange(take, len(r_group))
            for r_layer in r_cache.layers:
                r_layer.batch_select_indices(rest.to(self.decoder.device))
            self.reserve = [r_cache, r_valid[take:], r_first[take:], r_group[take:]]

    def _prefill_next_group(self, prefix) -> list:
        group = [self.pending.pop() for _ in range(min(self.batch_size, len(self.pending)))]
        for i in group:
            self.seqs[i], self.out[i] = list(self.prompt_ids[i]), []
            self.drafter.add(i, self.seqs[i], self.decoder.prefix_len)
        return [*self.decoder._prefill_group([self.seqs[i] for i in group], prefix), group]

    def step_inputs(self, drafts: list[list[int]], q: int, pad: int):
        """(input ids, positions, attention mask) of a pass over ``q`` slots per row: the row's newest
        token (not yet in the cache), then its draft, then padding at the row's last real position."""
        import torch

        neg = float("-inf")
        if self.used + q > self.valid.shape[1]:
            grown = self.valid.new_full((len(self.valid), self.valid.shape[1] + q), neg)
            self.valid = torch.cat([self.valid, grown], dim=1)
        rows, used = len(self.live), self.used
        self.valid[:rows, used:used + q] = 0
        if q == 1:
            step = torch.tensor([[self.seqs[i][-1]] for i in self.live])
            positions = torch.tensor([[len(self.seqs[i]) - 1] for i in self.live])
            return step, positions, self.valid[:rows, None, None, :used + 1]
        step_rows, pos_rows = [], []
        for i, draft in zip(self.live, drafts):
            n_real = 1 + len(draft)
            last = len(self.seqs[i]) - 1
            step_rows.append([self.seqs[i][-1]] + draft + [pad] * (q - n_real))
            pos_rows.append(list(range(last, last + n_real)) + [last + n_real - 1] * (q - n_real))
        causal = self.valid.new_zeros((q, used + q))
        causal[:, used:] = torch.full((q, q), neg).triu(1)  # a draft sees the ones before it
        mask = self.valid[:rows, None, None, :used + q] + causal
        return torch.tensor(step_rows), torch.tensor(pos_rows), mask

    def accept(self, guesses: list[list[int]], drafts: list[list[int]], q: int) -> None:
        """Verified: the leading drafts the model itself chose, then its own next token; the other slots
        (rejected drafts, padding) are masked from now on."""
        import torch

        if q == 1:
            self.verified = guesses
        else:
            neg = float("-inf")
            self.verified, columns = [], []
            for g, draft in zip(guesses, drafts):
                a = 0
                while a < len(draft) and draft[a] == g[a]:
                    a += 1
                self.verified.append(g[:a + 1])
                columns.append([0.0] * (a + 1) + [neg] * (q - a - 1))
            self.valid[:len(self.live), self.used:self.used + q] = torch.tensor(columns)
        self.used += q
