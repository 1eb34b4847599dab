"""File helpers shared by every stage: atomic writes, JSON / JSONL, stable hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "atomic_path", "dumps_json", "write_json", "read_json", "write_jsonl", "read_jsonl", "sha256_file",
    "sha256_tree"
]


@contextlib.contextmanager
def atomic_path(final, *, directory: bool = False):
    """Yield a temporary sibling path; rename it onto ``final`` only if the block succeeds.

    A failed step leaves nothing at ``final`` (and no temporary either). A killed one (SIGKILL, power
    loss) cannot clean up: its temporary is removed by the next write of ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stale = re.compile(rf"\.{re.escape(final.name)}\.[a-z0-9_]{{8}}\.tmp")  # mkdtemp's 8 random characters
    for old in final.parent.iterdir():
        if old.is_dir() and not old.is_symlink() and stale.fullmatch(old.name):
            shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp if directory else tmp / final.name
    try:
        yield target
        if directory:  # mkdtemp makes 0700; an output directory gets the modes the umask allows
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(target, 0o777 & ~umask)
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists():
            final.unlink()
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dumps_json(obj) -> str:
    """Canonical JSON text: sorted keys, 2-space indent, trailing newline (stable bytes)."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(dumps_json(obj), encoding="utf-8")


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path, rows) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def read_jsonl(path) -> list:
    """Rows of a JSONL file we wrote ourselves (user files go through snaketune.data)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# Snakemake's own marker in directory outputs (written after the job): bookkeeping, not content.
TREE_IGNORED = frozenset({".snakemake_timestamp"})


def sha256_tree(path) -> str:
    """Stable hash of a file or a directory tree: relative paths and file hashes, sorted."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file() and p.name not in TREE_IGNORED):
        rel = item.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0" + sha256_file(item).encode() + b"\n")
    return h.hexdigest()
