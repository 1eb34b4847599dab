"""Provenance records, the `audit` target, bitwise-reproducible reruns and the HTML report.

One tiny pipeline run (export on) is shared by the module; each test that breaks something does it
in a copy of that run, so the tests do not depend on their order.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from snaketune.files import sha256_file, sha256_tree
from snaketune.provenance import find_seeds, jsonable, lock_file, lock_variant, record_name
from snaketune.verify import installed_packages, read_lock

from pipeline import DEMO_SPECIALISTS, REPO, make_workdir, planned_jobs, snakemake, tiny_config

SPECIALIST = "veran-tools"
CONFIG = tiny_config({SPECIALIST: DEMO_SPECIALISTS[SPECIALIST]}, export=True)
CONFIG["export"] = {"enabled": True, "quants": ["f16", "q8_0"], "lora_gguf": True, "parity": True,
                    "parity_prompts": 2}
# Every rule of the run above writes a record (the audit itself writes none).
RULES = {"lock", "verify", "demo_dataset", "prepare_data", "tiny_base", "train", "evaluate_base",
         "evaluate_tuned", "eval_summary", "merge", "gguf", "base_gguf", "lora_gguf", "gguf_parity",
         "modelfile", "report_tables", "parity_table"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]


def output_text(proc) -> str:
    return proc.stdout + proc.stderr


def audit(workdir, *args, **kw):
    return snakemake(workdir, "audit", *args, check=False, **kw)


def audit_report(workdir) -> dict:
    return json.loads((Path(workdir) / "results/audit.json").read_text())


def drift_details(workdir) -> str:
    """Every drift's text, one a line (the terminal table wraps them)."""
    return "\n".join(d["detail"] for d in audit_report(workdir)["drifts"])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny run (rule all, export on)."""
    work = make_workdir(tmp_path_factory.mktemp("audit") / "a", CONFIG)
    snakemake(work)
    return work


@pytest.fixture
def broken(run, tmp_path):
    """A copy of the run to break; code links into the repository unless asked to be copied too."""

    def make(copy_code: bool = False) -> Path:
        work = tmp_path / "copy"
        shutil.copytree(run, work, symlinks=True, ignore=shutil.ignore_patterns(".snakemake", "report.html"))
        if copy_code:
            (work / "workflow").unlink()
            shutil.copytree(REPO / "workflow", work / "workflow",
                            ignore=shutil.ignore_patterns("__pycache__"))
        return work

    return make


# ------------------------------------------------------------------ pure parts


def test_record_names_params_and_seeds():
    assert record_name({}) == "all"
    assert record_name({"specialist": "veran-tools", "quant": "f16"}) == "veran-tools.f16"
    assert record_name({"path": "a/b"}) == "a%2Fb"
    params = {"split": {"train": 0.8, "seed": 42}, "spec": {"train": {"seed": 7, "lr": 2e-4}},
              "shape": ({"a": 1},)}
    assert jsonable(params)["shape"] == [{"a": 1}]
    assert find_seeds(params) == {"params.split.seed": 42, "params.spec.train.seed": 7}


def test_param_changes_name_each_leaf():
    from snaketune.audit import param_changes

    made = {"eval_cfg": {"max_new_tokens": 32, "targets": {"exact_match": 0.9}}, "old": 1}
    now = {"eval_cfg": {"max_new_tokens": 16, "targets": {"exact_match": 0.9}}, "new": 2}
    assert param_changes(made, now) == ["params.eval_cfg.max_new_tokens: 32 when made, 16 now",
                                        "params.new: absent when made, 2 now",
                                        "params.old: 1 when made, gone now"]


def test_index_drift_from_the_lock_report_becomes_notes_not_drift(tmp_path):
    from snaketune.audit import index_drift_notes

    report = tmp_path / "lock_report.json"
    assert index_drift_notes(report) == (None, [])  # no lock run yet: nothing to say
    drift = {"checked": True, "packages": [{"package": "certifi", "locked": "2026.10.18",
                                            "resolvable": "2026.10.19.post1"}]}
    report.write_text(json.dumps({"index_drift": drift}))
    found, notes = index_drift_notes(report)
    assert found == drift
    assert notes == ["the index would move certifi 2026.10.18 -> 2026.10.19.post1 in a fresh resolution "
                     "(the lock keeps 2026.10.18; "
                     "`python -m snaketune.envlock write --upgrade-package certifi` moves it)"]
    report.write_text(json.dumps({"index_drift": {"checked": False, "error": "offline", "packages": []}}))
    assert index_drift_notes(report)[1] == ["index drift was not checked when the lock was made (offline)"]


# ------------------------------------------------------------------ provenance of a real run


@pytest.mark.e2e
def test_every_step_records_its_provenance(run):
    records = {p.parent.name: json.loads(p.read_text())
               for p in (run / "results/provenance").glob("*/*.json")}
    assert set(records) == RULES
    lock = lock_file(lock_variant(installed_packages()), REPO / "envs/lock")
    for rule, record in records.items():
        assert record["rule"] == rule
        for out in record["outputs"]:
            assert out["sha256"] == sha256_tree(run / out["path"]), (rule, out["path"])
        assert record["environment"]["lock"]["sha256"] == sha256_file(lock)
        assert record["code"]["script"]["path"].startswith("workflow/scripts/")
        assert record["code"]["package"]["files"]["provenance.py"] == sha256_file(
            REPO / "workflow/scripts/snaketune/provenance.py")
        assert record["started"] <= record["finished"]
        assert record["device"]["cpu"] and record["environment"]["snakemake"]
    tuned = json.loads((run / f"results/provenance/evaluate_tuned/{SPECIALIST}.json").read_text())
    assert tuned["wildcards"] == {"specialist": SPECIALIST}
    assert {i["path"] for i in tuned["inputs"]} == {"results/base/tiny", f"results/adapters/{SPECIALIST}",
                                                    "results/data/test.jsonl"}
    assert tuned["seeds"] == {}  # greedy decoding; the adapter's seed is in the train record
    train = json.loads((run / f"results/provenance/train/{SPECIALIST}.json").read_text())
    assert train["seeds"]["params.settings.train.seed"] == 42
    assert tuned["params"]["eval_cfg"]["max_new_tokens"] == 32
    assert {"torch", "transformers", "peft"} <= set(tuned["environment"]["packages"])
    assert "evaluation.py" in tuned["code"]["package"]["imported"]
    split = json.loads((run / "results/provenance/prepare_data/all.json").read_text())
    assert split["seeds"] == {"params.split.seed": 1}
    if (REPO / ".git").exists():
        assert split["git"] and len(split["git"]["commit"]) == 40


# ------------------------------------------------------------------ the audit


@pytest.mark.e2e
def test_audit_passes_on_a_fresh_run_and_is_not_part_of_all(run):
    proc = audit(run)
    assert proc.returncode == 0, output_text(proc)
    assert "no drift" in output_text(proc)
    report = audit_report(run)
    assert report["status"] == "pass" and report["drifts"] == []
    lock_report = json.loads((run / "results/env/lock_report.json").read_text())
    assert report["lock"]["index_drift"] == lock_report["index_drift"]  # reported there, never a drift
    records = len(list((run / "results/provenance").glob("*/*.json")))
    assert report["records"] == records == len(RULES) + 1  # 2 gguf
    everything = planned_jobs(run, "--forceall")
    assert "all" in everything and "report_tables" in everything and "audit" not in everything


@pytest.mark.e2e
def test_audit_fails_on_an_edited_result_and_names_what_it_affects(broken):
    work = broken()
    test = work / "results/data/test.jsonl"
    test.write_text(test.read_text() + test.read_text().splitlines()[0] + "\n")
    proc = audit(work)
    text = output_text(proc)
    assert proc.returncode != 0
    assert "audit found" in text and "output: results/data/test.jsonl changed: sha256" in text
    details = drift_details(work)
    assert "when rule prepare_data made it" in details
    assert "input results/data/test.jsonl changed since rule evaluate_base read it" in details
    report = audit_report(work)
    assert {"results/data/test.jsonl", f"results/eval/base/{SPECIALIST}.json",
            f"results/eval/tuned/{SPECIALIST}.json",
            f"results/gguf/{SPECIALIST}.parity.json"} <= set(report["affected_outputs"])
    # train never read the test split
    assert f"results/adapters/{SPECIALIST}" not in report["affected_outputs"]

    proc = audit(work, "--config", "audit_strict=false")
    assert proc.returncode == 0, output_text(proc)
    assert audit_report(work)["status"] == "drift" and "test.jsonl changed" in output_text(proc)


@pytest.mark.e2e
def test_audit_fails_when_a_config_param_changes(broken):
    work = broken()
    config = copy.deepcopy(CONFIG)
    config["eval"]["max_new_tokens"] = 16
    (work / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = audit(work)
    text = output_text(proc)
    assert proc.returncode != 0
    assert "params: params.eval_cfg.max_new_tokens: 32 when made, 16 now (rule evaluate_base)" in text
    assert "params.eval_cfg.max_new_tokens: 32 when made, 16 now (rule evaluate_tuned)" in drift_details(work)
    report = audit_report(work)
    assert {d["kind"] for d in report["drifts"]} == {"params"}
    assert set(report["affected_outputs"]) == {f"results/eval/{m}/{SPECIALIST}{s}" for m in ("base", "tuned")
                                               for s in (".json", ".generations.jsonl", ".timing.json")}


@pytest.mark.e2e
def test_audit_fails_when_a_locked_package_has_another_version(broken, tmp_path):
    work = broken()
    site = tmp_path / "site"
    dist = site / "jsonschema-0.0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: jsonschema\nVersion: 0.0.1\n")
    lock = lock_file(lock_variant(installed_packages()), "envs/lock")
    pinned = read_lock(REPO / lock)["pins"]["jsonschema"]
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    proc = audit(work, env={"PYTHONPATH": pythonpath})
    text = output_text(proc)
    assert proc.returncode != 0
    assert f"environment: jsonschema 0.0.1 is installed; {lock.as_posix()} pins {pinned}" in text
    report = audit_report(work)
    drift = next(d for d in report["drifts"] if d["kind"] == "environment")
    assert "results/data/train.jsonl" in drift["outputs"]  # the data stage validates rows with jsonschema
    assert f"results/eval/base/{SPECIALIST}.json" in drift["outputs"]


@pytest.mark.e2e
def test_audit_fails_when_an_entry_script_is_edited(broken):
    work = broken(copy_code=True)
    assert audit(work).returncode == 0  # the copied code is the code that ran
    script = work / "workflow/scripts/summarise_eval.py"
    script.write_text(script.read_text() + "# edited\n")
    proc = audit(work)
    text = output_text(proc)
    assert proc.returncode != 0
    assert "code: entry script workflow/scripts/summarise_eval.py changed (sha256" in text
    assert "since rule eval_summary ran it" in drift_details(work)
    assert set(audit_report(work)["affected_outputs"]) == {"results/eval/summary.json",
                                                           "results/eval/summary.md"}


# ------------------------------------------------------------------ bitwise reproducibility


def result_hashes(work: Path) -> dict:
    """sha256 of every file of the data splits, tiny base, adapters, eval results, merged models and GGUFs."""
    results = work / "results"
    files = [results / "data" / name for name in ("train.jsonl", "val.jsonl", "test.jsonl",
                                                  "split_stats.json",
                                                   "rejected.jsonl")]
    for tree in ("base", "adapters", "merged"):
        files += [p for p in (results / tree).rglob("*")
                  if p.is_file() and p.name != ".snakemake_timestamp" and not p.name.endswith(".timing.json")]
    files += [p for p in (results / "eval").rglob("*") if p.is_file() and not p.name.endswith(".timing.json")]
    files += list((results / "gguf").rglob("*.gguf")) + list((results / "gguf").glob("*.parity.json"))
    return {p.relative_to(work).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


@pytest.mark.e2e
@pytest.mark.slow
def test_two_clean_runs_in_two_directories_give_the_same_bytes(run, tmp_path):
    other = make_workdir(tmp_path / "b", CONFIG)
    snakemake(other)
    a, b = result_hashes(run), result_hashes(other)
    assert len(a) > 30 and any(name.endswith(".gguf") for name in a)
    assert set(a) == set(b)
    differ = sorted(name for name in a if a[name] != b[name])
    assert not differ, f"{len(differ)} file(s) differ between two clean runs: {differ}"


# ------------------------------------------------------------------ the HTML report


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI must run the report test: chromium is not installed (tests/setup_system.sh)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


@pytest.mark.e2e
def test_report_builds_and_shows_the_eval_summary_in_chromium(run, tmp_path):
    browser = chromium()
    snakemake(run, "--report", "results/report.html")
    page = run / "results/report.html"
    assert page.stat().st_size > 100_000
    flags = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=10000"]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1400,1000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 1000)
        # not a blank page
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50
    # the landing page: the eval summary table (base -> tuned per metric) beside the rule graph
    assert "Evaluation summary: base vs tuned" in dom
    assert "exact match" in dom and "tool accuracy" in dom and SPECIALIST in dom
    assert "gguf_parity" in dom  # a node of the rule graph
    summary = json.loads((run / "results/eval/summary.json").read_text())["specialists"][0]
    exact = summary["metrics"]["exact_match"]
    assert f"{exact['base']:.3f} → {exact['tuned']:.3f}" in dom
    for category in ("Data", "Environment", "Evaluation", "Export"):
        assert f">{category}<" in dom
