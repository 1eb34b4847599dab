"""The train stage: one LoRA (or QLoRA) adapter per specialist with TRL's SFTTrainer, resumable, reproducible.

``train_adapter`` is what the rule runs. It selects the specialist's examples, tokenizes them with the
shared chat template (assistant-only labels), trains from the base with PEFT, checkpoints into the
rule's checkpoint directory (resuming when the inputs and settings are the same), and writes
the adapter directory atomically: adapter weights and config, tokenizer + template,
``specialist_config.json``, ``train_metrics.json`` and ``loss_curve.png``. What ``train.report_to`` asks
for (TensorBoard, MLflow, W&B) is reported live, outside the adapter directory (``snaketune.tracking``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chat_template import encode_chat, gold_tool_names, specialist_chat, specialist_rows
from .devices import device_options, device_preference, flash_attention_available, resolve_device
from .errors import SnaketuneError
from .files import atomic_path, dumps_json, read_jsonl, sha256_file, write_json
from .host_memory import trim_heap
from .kernels import resolve_kernels
from .ranks import backend, barrier, gathered_state_dict, rank_and_world
from .tracking import check_tracking, start_tracking, without_tracking

__all__ = [
    "DETERMINISTIC_FILES", "tokenize_rows", "label_mask_tokens", "resolve_options",
    "training_arguments", "lora_config", "length_grouped_sampler", "assistant_head_loss", "row_batches",
    "trainer_class",
    "set_threads", "start_run", "train_adapter"
]

log = logging.getLogger("snaketune.training")

FINGERPRINT = "fingerprint.json"
# Files of the adapter directory whose bytes depend only on the inputs (timings go to a sidecar JSON).
DETERMINISTIC_FILES = ("adapter_model.safetensors", "adapter_config.json", "specialist_config.json",
                       "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_format.json",
                       "loss_curve.png")


# --- examples ---------------------------------------------------------------------------------

def tokenize_rows(rows, tokenizer, settings: dict, source=None) -> tuple[list[dict], list[str]]:
    """Token ids and labels (-100 outside what the assistant writes) for each row; also the ids skipped.

    ``source``: the file the rows come from, named in errors.

    A row whose template gives no assistant token is an error (it would train on nothing); a row longer
    than ``max_seq_len`` is skipped (truncating it would teach the model to stop mid-call).
    """
    from .chat_format import FormatError

    max_len = int(settings["train"]["max_seq_len"])
    examples, skipped = [], []
    for index, row in enumerate(rows):
        messages, tools = specialist_chat(row, settings)
        try:
            enc = encode_chat(tokenizer, messages, tools)
        except FormatError as err:  # the base's template, not the row, is at fault
            raise SnaketuneError(source, f"row {row.get('id', index)}: {err}",
                                 field="base_model.chat_template",
                                 fix="set base_model.chat_template to a family (chatml, gemma) or a .jinja "
                                     "file") from err
        ids, mask = enc["input_ids"], enc["assistant_masks"]
        if not any(mask):
            raise SnaketuneError(source, f"row {row.get('id', index)} has an empty loss mask: the chat "
                                 "template marks no assistant tokens", field="messages",
                                 fix="end every row with an assistant message (content or tool_calls)")
        if len(ids) > max_len:
            skipped.append(str(row.get("id", index)))
            continue
        labels = [tok if m else -100 for tok, m in zip(ids, mask)]
        examples.append({"input_ids": ids, "labels": labels})
    return examples, skipped


def label_mask_tokens(labels) -> int:
    """How many positions of a (batch of) label rows the loss sees (after the causal shift)."""
    import torch

    labels = torch.as_tensor(labels)
    if labels.dim() == 1:
        labels = labels[None]
    return int((labels[:, 1:] != -100).sum())


# --- resolved options ---------------------------------------------------------------------------

def resolve_options(train: dict, device: str, *, config_path: str, base_width: int | None = None) -> dict:
    """``auto`` choices made concrete for this device (snaketune.devices.device_options); ``train`` is a
    specialist's train settings from the config file ``config_path``; ``base_width``: the base's hidden
    size."""
    return device_options(device, train, base_width=base_width, config_path=config_path)


def training_arguments(settings: dict, options: dict, output_dir) -> dict:
    """The SFTConfig keyword arguments for a specialist's settings (a plain dict, so tests can read it)."""
    train = settings["train"]
    warmup = float(train.get("warmup_ratio", 0.0))
    args = {
        "output_dir": str(output_dir),
        "num_train_epochs": float(train["epochs"]),
        "max_steps": int(train.get("max_steps", -1)),
        "learning_rate": float(train["lr"]),
        "lr_scheduler_type": train.get("lr_scheduler", "linear"),
        "warmup_steps": min(warmup, 0.999),  # below 1: a ratio of the total steps
        "weight_decay": float(train.get("weight_decay", 0.0)),
        "per_device_train_batch_size": int(train["batch_size"]),
        # the validation loss takes TRL's full-vocabulary logits: row by row, one row's at a time
        "per_device_eval_batch_size": 1 if options.get("row_by_row") else int(train["batch_size"]),
        "gradient_accumulation_steps": int(train["grad_accum"]),
        "max_length": int(train["max_seq_len"]),
        "packing": options["packing"],
        "padding_free": options["packing"],
        "bf16": options["dtype"] == "bf16",
        "fp16": options["dtype"] == "fp16",
        # transformers' name for gradient checkpointing
        "activation_checkpointing": options["gradient_checkpointing"],
        "train_sampling_strategy": "group_by_length" if train.get("group_by_length", True) else "random",
        "deepspeed": train.get("deepspeed") or None,
        "seed": int(train["seed"]),
        "data_seed": int(train["seed"]),
        "save_strategy": "steps",
        "save_steps": int(train.get("save_steps", 50)),
        "save_total_limit": 1,
        "logging_steps": int(train.get("logging_steps", 10)),
        "logging_first_step": True,
        "eval_strategy": "no",
        "report_to": "none",  # snaketune.tracking adds the reporters' callbacks itself
        "use_liger_kernel": bool(options.get("liger", False)),
        "use_cpu": options["device"] == "cpu",
        "dataloader_num_workers": 0,
        "assistant_only_loss": False,  # labels are built here from the template's assistant mask
        "remove_unused_columns": True,
        "disable_tqdm": False,
    }
    if options["gradient_checkpointing"]:
        args["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    return args


def lora_config(settings: dict):
    from peft import LoraConfig

    lora = settings["lora"]
    target = lora.get("target_modules", "all-linear")
    return LoraConfig(
        r=int(lora["r"]), lora_alpha=float(lora["alpha"]), lora_dropout=float(lora["dropout"]),
        target_modules=target if isinstance(target, str) else list(target),
        modules_to_save=list(lora.get("modules_to_save") or []) or None,
        bias="none", task_type="CAUSAL_LM",
    )


# --- checkpoints --------------------------------------------------------------------------------

def fingerprint(base_identity: dict, data_hashes: dict, settings: dict, options: dict, threads: int) -> str:
    """What a checkpoint was made from; a checkpoint is resumed only under the same fingerprint."""
    import peft
    import torch
    import transformers
    import trl

    payload = {
        "base": base_identity, "data": data_hashes,
        "settings": {k: settings[k] for k in ("lora", "train", "system_prompt", "focus_tools")},
        "options": options, "threads": threads,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
    }
    return hashlib.sha256(dumps_json(payload).encode()).hexdigest()


def _complete(checkpoint: Path) -> bool:
    """A checkpoint the Trainer finished writing (trainer_state.json comes last and must parse)."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return (checkpoint / "adapter_model.safetensors").is_file()


def resumable_checkpoint(checkpoint_dir, fp: str, *, reset: bool = True) -> Path | None:
    """The newest complete checkpoint made under fingerprint ``fp``; else the directory is reset.

    ``reset=False`` (ranks other than 0, after rank 0 has looked): find, never touch the directory.
    """
    checkpoint_dir = Path(checkpoint_dir)
    marker = checkpoint_dir / FINGERPRINT
    same = marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fp
    if same:
        found = sorted((p for p in checkpoint_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                       key=lambda p: int(p.name.split("-")[-1]), reverse=True)
        for checkpoint in found:
            if _complete(checkpoint):
                return checkpoint
    if not reset:
        return None
    if checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True)
    marker.write_text(dumps_json({"fingerprint": fp}))
    return None


# --- outputs ------------------------------------------------------------------------------------

def plot_loss_curve(losses: list[tuple[int, float]], eval_loss, out_path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if losses:
        ax.plot([s for s, _ in losses], [v for _, v in losses], marker=".", label="train loss")
    if eval_loss is not None and losses:
        ax.axhline(eval_loss, color="tab:orange", linestyle="--", label=f"val loss {eval_loss:.3f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, metadata={"Software": None})  # no version string: same bytes for the same losses
    plt.close(fig)


def _portable(path) -> str:
    """A path as recorded in outputs: relative paths as given, absolute ones by name (no machine paths)."""
    path = Path(path)
    return path.as_posix() if not path.is_absolute() else path.name


def _peak_memory_mb(device: str) -> float:
    import resource

    import torch

    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


# --- the trainer ----------------------------------------------------------------------------------

def length_grouped_sampler(lengths, batch_size: int, seed: int, chunk_batches: int = 4):
    """Length-grouped batches that are still reshuffled every epoch.

    Each epoch (seeded by ``seed + epoch``) permutes the examples, cuts the permutation into chunks of
    ``chunk_batches`` batches, sorts each chunk by length and shuffles the order of its batches.
    Transformers' own sampler sorts chunks of 50 batches: on a small dataset that is the whole epoch,
    so every epoch repeats the same batches from longest to shortest, which trains worse.
    """
    import torch

    class ShuffledLengthGroupedSampler(torch.utils.data.Sampler):
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return len(lengths)

        def __iter__(self):
            gen = torch.Generator().manual_seed(seed + self.epoch)
            perm = torch.randperm(len(lengths), generator=gen).tolist()
            chunk = batch_size * chunk_batches
            order = []
            for start in range(0, len(perm), chunk):
                # stable: ties keep perm order
                part = sorted(perm[start:start + chunk], key=lambda i: -lengths[i])
                batches = [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
                for k in torch.randperm(len(batches), generator=gen).tolist():
                    order.extend(batches[k])
            return iter(order)

    return ShuffledLengthGroupedSampler()


def _assistant_head_applies(model, inputs, return_outputs: bool, args) -> bool:
    import torch

    if return_outputs or args.packing or "labels" not in inputs or "attention_mask" not in inputs:
        return False
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or getattr(model, "is_quantized", False):
        return False
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return (hasattr(causal_lm, "model") and hasattr(causal_lm, "lm_head")
            and not getattr(causal_lm, "is_quantized", False))


def assistant_head_loss(trainer, model, inputs, num_items_in_batch=None):
    """Run the decoder, then the LM head on the labelled positions only; log TRL's token metrics."""
    import torch
    import torch.nn.functional as F

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                             use_cache=False).last_hidden_state
    labels = inputs["labels"][:, 1:]
    keep = labels != -100
    logits = causal_lm.lm_head(hidden[:, :-1][keep]).float()
    targets = labels[keep]
    n_items = keep.sum() if num_items_in_batch is None else num_items_in_batch
    loss = F.cross_entropy(logits, targets, reduction="sum") / torch.as_tensor(n_items).clamp(min=1)
    mode = "train" if model.training else "eval"
    with torch.no_grad():
        n_valid = int(keep.sum())
        log_probs = torch.log_softmax(logits, dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1).sum().item()
        correct = (logits.argmax(-1) == targets).sum().item()
        trainer._metrics[mode]["entropy"].append(entropy / n_valid if n_valid else 0.0)
        trainer._metrics[mode]["mean_token_accuracy"].append(correct / n_valid if n_valid else 0.0)
        if mode == "train":
            trainer._total_train_tokens += int(inputs["attention_mask"].sum())
        trainer._metrics[mode]["num_tokens"] = [trainer._total_train_tokens]
    return loss


def row_batches(inputs) -> list[dict] | None:
    """A right-padded batch as one unpadded batch per row; None where it cannot be split so (one row, left
    padding, an entry that is not a (rows, positions) tensor).

    A CPU computes a padded batch no faster than its rows one after the other, so splitting costs nothing
    there, drops the padding, and holds one row's activations at a time instead of the batch's
    (bench/real_base.py: SmolLM2 at batch 4, 5.7 -> 3.4 GB at the same tokens/s).
    """
    import torch

    mask = inputs.get("attention_mask")
    ids = inputs.get("input_ids")
    if mask is None or ids is None or ids.dim() != 2 or ids.shape[0] < 2:
        return None
    if any(not isinstance(v, torch.Tensor) or v.shape[:2] != ids.shape for v in inputs.values()):
        return None
    lengths = mask.sum(dim=1)
    positions = torch.arange(ids.shape[1], device=mask.device)
    if not bool((mask == (positions[None, :] < lengths[:, None])).all()):  # not right padding
        return None
    return [{k: v[r:r + 1, :int(n)] for k, v in inputs.items()} for r, n in enumerate(lengths.tolist())]


def trainer_class():
    from trl import SFTTrainer

    class CheckedSFTTrainer(SFTTrainer):
        """SFTTrainer that refuses a batch whose loss mask is empty (it would train on nothing, silently).

        ``config_path``: the config file whose ``train.max_seq_len`` that error names. With ``row_by_row``
        (snaketune.devices.device_options) each batch runs as one unpadded micro-batch per row; with
        ``trim_heap`` (CPU training of a wide base) the heap's free pages go back to the kernel after each
        step.
        """

        def __init__(self, *args, config_path: str | None = None, row_by_row: bool = False,
                     trim_heap: bool = False, **kwargs):
            self.config_path = config_path
            self.row_by_row = row_by_row
            self.heap_trim = trim_heap
            super().__init__(*args, **kwargs)

        def training_step(self, model, inputs, num_items_in_batch=None):
            labels = inputs.get("labels")
            if labels is not None and label_mask_tokens(labels) == 0:
                raise SnaketuneError(
                    self.config_path, f"batch at step {self.state.global_step} has an empty loss mask "
                    "(no assistant tokens after truncation)", field="train.max_seq_len",
                    fix="raise max_seq_len or drop rows whose assistant turn does not fit")
            rows = row_batches(inputs) if self.row_by_row and num_items_in_batch is not None else None
            # Row by row: each row's forward and backward alone, unpadded; the loss of each is divided by the
            # items of the whole accumulation group, so the summed gradients are the batch's.
            loss = None
            for part_inputs in rows or [inputs]:
                part = super().training_step(model, part_inputs, num_items_in_batch)
                loss = part if loss is None else loss + part
            if self.heap_trim:
                trim_heap()
            return loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """Cross-entropy with the LM head applied only where a label is (the assistant's tokens).

            SFTTrainer's fused head computes log-probabilities over the whole vocabulary at every position
            and then masks all but the assistant's ~5 %. Same loss and gradients, fewer FLOPs. Packed /
            padding-free batches, multi-process (DDP) and quantized models take TRL's path.
            """
            if not _assistant_head_applies(model, inputs, return_outputs, self.args):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return assistant_head_loss(self, model, inputs, num_items_in_batch)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            grouped = self.args.train_sampling_strategy == "group_by_length"
            if not grouped or "input_ids" not in dataset.column_names:
                return super()._get_train_sampler(train_dataset)
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return length_grouped_sampler(lengths, self.args.per_device_train_batch_size, self.args.seed)

    return CheckedSFTTrainer


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


@dataclass
class TrainingRun:
    """What a train step settles before it trains: the base, the device, the examples, the checkpoint."""

    settings: dict
    base_cfg: dict
    base_name: str
    options: dict
    threads: int
    checkpoint_dir: Path
    config_path: str
    rank: int = 0
    world_size: int = 1
    tokenizer: Any = None
    train_rows: list = field(default_factory=list)
    train_examples: list = field(default_factory=list)
    val_examples: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    n_tokens: int = 0
    identity: dict = field(default_factory=dict)
    data_hashes: dict = field(default_factory=dict)
    fingerprint: str = ""
    resume: Path | None = None

    @property
    def name(self) -> str:
        return self.settings["name"]

    @property
    def revision(self):
        return self.base_cfg.get("revision")

    @property
    def trust_remote_code(self) -> bool:
        return bool(self.base_cfg.get("trust_remote_code", False))


def train_adapter(base_dir, train_path, val_path, out_dir, settings: dict, checkpoint_dir, *,
                  config_path: str, base_cfg: dict | None = None, threads: int = 1, gpus: int | None = None,
                  timing_path=None, tracking: dict | None = None) -> dict:
    """Train one specialist's adapter into ``out_dir`` (atomically); returns train_metrics.

    ``base_dir`` is the base's local directory or hub id (``base_cfg`` = config["base_model"] adds
    revision / trust_remote_code); ``settings`` = config.specialist_settings(config, name), from the
    config file ``config_path`` (errors about settings name it). Checkpoints go to ``checkpoint_dir``.
    ``tracking`` = tracking.tracking_settings(config, name): what to report live, and where (None: nothing).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_threads(threads)
    import datasets
    import torch

    datasets.disable_caching()
    datasets.disable_progress_bars()
    settings = without_tracking(settings)  # tracking observes the run: no part of what the adapter is made of
    check_tracking(tracking, config_path=config_path)  # a reporter that is not installed: before any work
    run = start_run(base_dir, settings, base_cfg, threads, gpus, checkpoint_dir, config_path)
    load_examples(run, train_path, val_path)
    find_checkpoint(run, train_path, val_path)
    trainer, args = build_trainer(run)
    tracker = start_tracking(tracking, run, trainer)
    try:
        wall, cpu, eval_loss = fit(trainer, run)
        metrics = train_metrics(run, trainer, args, wall, cpu, eval_loss)
        spec_config = specialist_config(run, args, train_path, val_path)
        save_adapter(run, trainer, metrics, spec_config, out_dir, timing_path)
    except BaseException:
        tracker.fail()
        raise
    if tracker.report_to:
        tracker.finish(out_dir, metrics)
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return metrics


def start_run(base_dir, settings: dict, base_cfg: dict | None, threads: int, gpus: int | None,
              checkpoint_dir, config_path: str) -> TrainingRun:
    """The device options, this process's rank, and the checkpoint directory of a train step."""
    from .modeling import base_width, quantization_config

    base_cfg = dict(base_cfg or {})
    base_name = str(base_dir) if base_dir else base_cfg["name_or_path"]
    gpus = settings.get("resources", {}).get("gpus", 0) if gpus is None else gpus
    device = resolve_device(gpus, device_preference(settings), config_path=config_path)
    width = base_width(base_name, base_cfg.get("revision"), bool(base_cfg.get("trust_remote_code", False)))
    options = resolve_options(settings["train"], device, config_path=config_path, base_width=width)
    options["liger"] = resolve_kernels(settings["train"], options["device"], config_path=config_path)
    rank, world_size = rank_and_world()  # torchrun children (snaketune.launch): rank 0 alone writes
    if world_size > 1:
        options["world_size"] = world_size  # in the fingerprint: n processes train differently from one
        if options["row_by_row"]:  # each row's backward would synchronise the gradients again
            log.info("train.row_by_row: off with %d training processes", world_size)
            options["row_by_row"] = False
    run = TrainingRun(settings=settings, base_cfg=base_cfg,
                      base_name=base_name, options=options,
                      threads=threads, checkpoint_dir=Path(checkpoint_dir), config_path=config_path,
                      rank=rank, world_size=world_size)
    # refused here, before the checkpoint directory is touched
    quantization_config(options["quantization"], config_path=config_path)
    return run


def load_examples(run: TrainingRun, train_path, val_path) -> None:
    """The tokenizer and the specialist's tokenized training and validation examples."""
    from .modeling import load_tokenizer

    settings, name = run.settings, run.name
    run.tokenizer = load_tokenizer(run.base_name, run.revision, run.trust_remote_code,
                                   config_path=run.config_path,
                                   chat_template=run.base_cfg.get("chat_template"))
    run.train_rows = specialist_rows(read_jsonl(train_path), settings["focus_tools"])
    val_rows = specialist_rows(read_jsonl(val_path), settings["focus_tools"]) if val_path else []
    if not run.train_rows:
        raise SnaketuneError(train_path, f"no training rows call only {name}'s focus tools",
                             field=f"specialists.{name}.focus_tools",
                             fix="check the tool names against the data, or leave focus_tools empty")
    run.train_examples, run.skipped = tokenize_rows(run.train_rows, run.tokenizer, settings, str(train_path))
    run.val_examples, _ = tokenize_rows(val_rows, run.tokenizer, settings, str(val_path))
    if run.skipped:
        log.warning("%d of %d training rows are longer than max_seq_len %d and were skipped",
                    len(run.skipped), len(run.train_rows), settings["train"]["max_seq_len"])
    if not run.train_examples:
        raise SnaketuneError(run.config_path, f"every training row of {name} is longer than max_seq_len",
                             field="defaults.train.max_seq_len", fix="raise max_seq_len")
    run.n_tokens = sum(len(e["input_ids"]) for e in run.train_examples)
    log.info("%s: %d training rows (%d tokens, %.0f per row), %d validation rows, on %s (%s, %d thread%s)",
             name, len(run.train_examples), run.n_tokens, run.n_tokens / len(run.train_examples),
             len(run.val_examples), run.options["device"], run.options["dtype"], run.threads,
             "" if run.threads == 1 else "s")


def find_checkpoint(run: TrainingRun, train_path, val_path) -> None:
    """The checkpoint to resume from, if one was made from the same inputs and settings."""
    from .chat_format import format_of
    from .modeling import base_identity

    # the chat format decides the token ids: a checkpoint trained in another format is not this run's
    run.identity = {**base_identity(run.base_name, run.revision),
                    "chat_format": format_of(run.tokenizer).sha256}
    run.data_hashes = {"train": sha256_file(train_path), "val": sha256_file(val_path) if val_path else None}
    run.fingerprint = fingerprint(run.identity, run.data_hashes, run.settings, run.options, run.threads)
    resume = resumable_checkpoint(run.checkpoint_dir, run.fingerprint) if run.rank == 0 else None
    if run.world_size > 1:  # the others look once rank 0 has kept or reset the directory
        barrier()
        if run.rank != 0:
            resume = resumable_checkpoint(run.checkpoint_dir, run.fingerprint, reset=False)
    run.resume = resume
    if resume is not None:
        log.info("resuming from checkpoint %s (same inputs and params)", resume)
    else:
        log.info("no checkpoint for these inputs and params in %s: training from the start",
                 run.checkpoint_dir)


def build_trainer(run: TrainingRun):
    """(trainer, its SFTConfig arguments): the base with LoRA (on a k-bit base where configured)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig

    from .modeling import load_base_model

    options = run.options
    flash = options["packing"] and options["device"] == "cuda" and flash_attention_available()
    device = options["device"]
    if run.world_size > 1 and device == "cuda":  # a quantized base goes to this rank's own card
        device = f"cuda:{torch.cuda.current_device()}"
    model = load_base_model(run.base_name, run.revision, run.trust_remote_code, dtype=options["dtype"],
                            quantization=options["quantization"],
                            device=device if options["quantization"] != "none" else None,
                            attn_implementation="flash_attention_2" if flash else None,
                            config_path=run.config_path)
    if options["quantization"] != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model,
                                                use_gradient_checkpointing=options["gradient_checkpointing"])
    peft_config = lora_config(run.settings)
    args = training_arguments(run.settings, options, run.checkpoint_dir)
    if run.world_size > 1:
        args["ddp_backend"] = backend(options["device"])
    if args["deepspeed"]:
        check_deepspeed(args["deepspeed"], run.config_path)
    trainer = trainer_class()(
        model=model, args=SFTConfig(**args), train_dataset=Dataset.from_list(run.train_examples),
        eval_dataset=Dataset.from_list(run.val_examples) if run.val_examples else None,
        processing_class=run.tokenizer, peft_config=peft_config, config_path=run.config_path,
        row_by_row=options.get("row_by_row", False), trim_heap=options.get("trim_heap", False),
    )
    return trainer, args


def check_deepspeed(config_file, config_path: str) -> None:
    """DeepSpeed is importable and its config file (``train.deepspeed`` in ``config_path``) is there."""
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        raise SnaketuneError(config_path, "a DeepSpeed config is set but deepspeed is not installed",
                             field="train.deepspeed",
                             fix="pip install deepspeed, or set deepspeed: null") from err
    if not Path(config_file).is_file():
        raise SnaketuneError(config_file, "DeepSpeed config file not found", field="train.deepspeed",
                             fix="point train.deepspeed at a JSON file")


def fit(trainer, run: TrainingRun) -> tuple[float, float, float | None]:
    """Train (from the checkpoint where there is one); (wall seconds, CPU seconds, validation loss)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.train(resume_from_checkpoint=str(run.resume) if run.resume else None)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    eval_loss = trainer.evaluate()["eval_loss"] if run.val_examples else None
    return wall, cpu, eval_loss


# What varies run to run (speed, memory, a resume) goes beside the adapter, so its bytes are reproducible.
TIMING_KEYS = ("tokens_per_second", "wall_time_s", "cpu_time_s", "peak_memory_mb", "resumed_from_step",
               "threads")


def train_metrics(run: TrainingRun, trainer, args: dict, wall: float, cpu: float, eval_loss) -> dict:
    """train_metrics.json's contents, plus the run-to-run ``TIMING_KEYS``."""
    history = trainer.state.log_history
    losses = [(int(e["step"]), float(e["loss"])) for e in history if "loss" in e]
    resumed_from = int(run.resume.name.split("-")[-1]) if run.resume else None
    examples_seen = (trainer.state.global_step - (resumed_from or 0)) * args["per_device_train_batch_size"] \
        * args["gradient_accumulation_steps"] * run.world_size
    tokens_per_example = run.n_tokens / len(run.train_examples)
    return {
        "specialist": run.name,
        "loss": [{"step": s, "loss": v} for s, v in losses],
        "final_train_loss": losses[-1][1] if losses else None,
        "eval_loss": eval_loss,
        "global_step": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0), 4),
        "train_examples": len(run.train_examples),
        "val_examples": len(run.val_examples),
        "skipped_too_long": len(run.skipped),
        "tokens_per_second": round(examples_seen * tokens_per_example / max(wall, 1e-9), 1),
        "wall_time_s": round(wall, 1),
        "cpu_time_s": round(cpu, 1),  # what the steps cost, whatever else the machine was running
        "resumed_from_step": resumed_from,
        "peak_memory_mb": _peak_memory_mb(run.options["device"]),
        "device": run.options["device"],
        "threads": run.threads,
    }


def specialist_config(run: TrainingRun, args: dict, train_path, val_path) -> dict:
    """specialist_config.json: what the adapter was trained from and with."""
    from .chat_format import format_of

    train_cfg, identity = run.settings["train"], run.identity
    return {
        "name": run.name,
        "system_prompt": run.settings["system_prompt"],
        "focus_tools": run.settings["focus_tools"],
        "tools_rendered": train_cfg.get("tools_rendered", "all"),
        "chat_format": format_of(run.tokenizer).record(),
        "lora": run.settings["lora"],
        "train": train_cfg,
        "resolved": {**run.options, **{k: v for k, v in args.items() if k != "output_dir"}},
        "base_model": identity if not Path(run.base_name).is_dir() else
        {**identity, "name_or_path": run.base_cfg.get("name_or_path", identity["name_or_path"])},
        "data": {"train": {"path": _portable(train_path), "sha256": run.data_hashes["train"]},
                 "val": {"path": _portable(val_path) if val_path else None, "sha256": run.data_hashes["val"]},
                 "train_examples": len(run.train_examples), "val_examples": len(run.val_examples),
                 "gold_tools": sorted({n for r in run.train_rows for n in gold_tool_names(r)})},
        "seed": int(train_cfg["seed"]),
        "threads": run.threads,
        "fingerprint": run.fingerprint,
    }


def save_adapter(run: TrainingRun, trainer, metrics: dict, spec_config: dict, out_dir, timing_path) -> None:
    """Rank 0 writes the adapter directory atomically, and the timing JSON; ``metrics`` gains world_size."""
    from .chat_format import save_tokenizer
    from .modeling import readable_tree

    # The adapter names the base as configured (a hub id or the relative path), not this run's absolute path.
    for cfg in trainer.model.peft_config.values():
        cfg.base_model_name_or_path = run.base_cfg.get("name_or_path", run.base_name)
        cfg.revision = run.revision
        if isinstance(cfg.target_modules, (set, frozenset)):  # all-linear: a set, ordered per process
            cfg.target_modules = sorted(cfg.target_modules)
    timing = {k: metrics[k] for k in TIMING_KEYS}
    if run.world_size > 1:
        metrics["world_size"] = run.world_size
    saved_metrics = {k: v for k, v in metrics.items() if k not in TIMING_KEYS}
    state_dict = gathered_state_dict(trainer)  # ZeRO-3 only; every rank takes part
    if run.rank != 0:  # rank 0 writes the adapter; the other ranks are done
        return
    losses = [(e["step"], e["loss"]) for e in metrics["loss"]]
    with atomic_path(out_dir, directory=True) as tmp:
        # The base's vocabulary is never resized here, so the base embedding is not part of the adapter.
        trainer.model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False,
                                      state_dict=state_dict)
        save_tokenizer(run.tokenizer, tmp)  # with chat_format.json: merge and export read the format there
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's model card template; specialist_config says more
        (tmp / "specialist_config.json").write_text(dumps_json(spec_config), encoding="utf-8")
        (tmp / "train_metrics.json").write_text(dumps_json(saved_metrics), encoding="utf-8")
        plot_loss_curve(losses, metrics["eval_loss"], tmp / "loss_curve.png",
                        f"{run.name}: LoRA training loss")
        readable_tree(tmp)
    if timing_path is not None:
        write_json(timing_path, timing)
    log.info("%s: %d steps in %.1f s, final loss %s, val loss %s; adapter in %s", run.name,
             trainer.state.global_step, metrics["wall_time_s"], metrics["final_train_loss"],
             metrics["eval_loss"], out_dir)
