"""The bad-input corpus (tests/bad_inputs/): every case stops the real pipeline with one line naming
the file and line or the config key, the problem and the fix, and leaves no new file under results/.

A case that fails after the data stage names the targets to build first (``prepare``: their files are
not new), its own ``target``, and the environment of the run (``env``, ``{workdir}`` expanded). A case may
add command-line arguments (``args``, e.g. a user's ``--configfile``) and name files the failed run must
leave outside results/ (``leaves``: {path: pieces of its text})."""

import os
import shutil
from pathlib import Path

import pytest
import yaml

from snaketune.config import deep_merge

from pipeline import make_workdir, snakemake

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "case.yaml").is_file())
TARGET = "results/data/split_stats.json"


def huge_line(path: Path) -> None:
    """A good row, then one 50 MB line (generated: too big to commit)."""
    good = (CORPUS / "malformed_json_line" / "files" / "data.jsonl").read_text().splitlines()[0]
    with open(path, "w") as fh:
        fh.write(good + "\n")
        fh.write('{"instruction": "' + "a" * (50 * 2**20) + '", "output": "x"}\n')


def case_env(case: dict, work: Path) -> dict:
    env = {key: str(value).replace("{workdir}", str(work)) for key, value in (case.get("env") or {}).items()}
    if "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    return env


def files_under(root: Path) -> set:
    if not (root / "results").exists():
        return set()
    return {p.relative_to(root).as_posix() for p in (root / "results").rglob("*")}


def test_corpus_is_big_enough():
    assert len(CASES) >= 30


@pytest.mark.e2e
@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_refused_clearly(name, tmp_path):
    case = yaml.safe_load((CORPUS / name / "case.yaml").read_text())
    work = tmp_path / "w"
    work.mkdir()
    if (CORPUS / name / "files").is_dir():
        shutil.copytree(CORPUS / name / "files", work, dirs_exist_ok=True)
    for path in work.rglob("*.jsonl"):
        if path.read_bytes().startswith(b"GENERATE:huge_line"):
            huge_line(path)
    base = yaml.safe_load((CORPUS / "base_config.yaml").read_text())
    make_workdir(work, deep_merge(base, case["config"]))
    if case.get("prepare"):
        snakemake(work, *case["prepare"], timeout=600)
    before = files_under(work)
    proc = snakemake(work, case.get("target", TARGET), *case.get("args", []), check=False, timeout=600,
                     env=case_env(case, work))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    lines = [line for line in output.splitlines() if all(piece in line for piece in case["expect"])]
    assert lines, f"no line holds all of {case['expect']}:\n{output[-4000:]}"
    assert files_under(work) <= before, f"new files: {sorted(files_under(work) - before)}"
    for path, pieces in (case.get("leaves") or {}).items():
        text = (work / path).read_text()
        assert all(piece in text for piece in pieces), f"{path} lacks one of {pieces}:\n{text}"
