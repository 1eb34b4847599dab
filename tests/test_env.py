"""The env stage: merging env files, conflicts, categories, the committed locks, and `verify`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from snaketune import envlock, verify
from snaketune.envlock import (
    compile_inputs,
    lock_environments,
    merge_requests,
    read_env_file,
    read_env_files,
    satisfying_version,
    write_lock,
)
from snaketune.errors import SnaketuneError
from snaketune.verify import lock_drift, read_lock, run_checks, verify_environment

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
SETTINGS = REPO / "envs" / "lock" / "resolve.yaml"
COMMITTED = {v: REPO / "envs" / "lock" / f"requirements.{v}.txt" for v in envlock.VARIANTS}


def env_file(tmp_path, name, *pip, conda=("python=3.11.7", "pip=23.2.1")) -> Path:
    path = tmp_path / "envs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["channels: [conda-forge, nodefaults]", "dependencies:"] + [f"  - {c}" for c in conda]
    lines += ["  - pip:"] + [f"      - {p}" for p in pip]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- reading and merging


def test_env_file_requests_carry_names_specifiers_and_lines(tmp_path):
    path = env_file(tmp_path, "train", "torch==2.13.0", "Jinja2[i18n]>=3.1")
    reqs = {r.name: r for r in read_env_file(path)}
    assert reqs["python"].specifier == "==3.11.7" and reqs["python"].kind == "conda"
    assert reqs["torch"].specifier == "==2.13.0" and reqs["torch"].line == 6
    assert reqs["jinja2"].extras == ("i18n",) and reqs["jinja2"].specifier == ">=3.1"
    assert reqs["torch"].env == "envs/train.yaml"


def test_a_bad_requirement_names_file_line_and_field(tmp_path):
    path = env_file(tmp_path, "data", "jsonschema==4.26.0", "pyyaml=6.0.3")
    with pytest.raises(SnaketuneError) as err:
        read_env_file(path)
    assert err.value.line == 7
    assert err.value.field == "dependencies[2].pip[1]"
    assert "'pyyaml=6.0.3'" in str(err.value) and str(path) in str(err.value)


def test_identical_pins_merge_without_a_conflict(tmp_path):
    merged = read_env_files([env_file(tmp_path, "train", "torch==2.13.0"),
                             env_file(tmp_path, "eval", "torch==2.13.0")])
    assert merged["torch"].specifier == "==2.13.0"
    assert merged["torch"].envs == ["envs/eval.yaml", "envs/train.yaml"]
    assert merged["torch"].conflict is None
    assert merged["conda:python"].specifier == "==3.11.7"


def test_disagreeing_pins_stop_naming_both_files_and_specifiers(tmp_path):
    files = [env_file(tmp_path, "train", "torch==2.13.0"), env_file(tmp_path, "export", "torch==2.12.1")]
    with pytest.raises(SnaketuneError) as err:
        read_env_files(files)
    message = str(err.value)
    for part in ("envs/export.yaml", "envs/train.yaml", "torch==2.12.1", "torch==2.13.0",
                 "no version satisfies"):
        assert part in message
    assert err.value.field == "torch" and "pin the same torch version" in err.value.fix


def test_disjoint_ranges_stop_too(tmp_path):
    files = [env_file(tmp_path, "data", "jsonschema>=4.20"), env_file(tmp_path, "report", "jsonschema<4.0")]
    with pytest.raises(SnaketuneError, match=r"jsonschema>=4.20 but envs/report.yaml asks jsonschema<4.0"):
        read_env_files(files)


def test_a_pin_inside_another_envs_range_wins_and_is_explained(tmp_path):
    merged = read_env_files([env_file(tmp_path, "export", "numpy==2.4.6"),
                             env_file(tmp_path, "report", "numpy>=1.26,<3")])
    item = merged["numpy"]
    assert item.specifier == "==2.4.6"
    assert item.conflict["resolution"] == "intersection"
    assert item.conflict["resolved_to"] == "numpy==2.4.6"
    assert item.conflict["requests"] == {"envs/export.yaml": "==2.4.6", "envs/report.yaml": "<3,>=1.26"}
    why = item.conflict["why"]
    assert "pinned by envs/export.yaml" in why and "satisfies every other" in why


def test_overlapping_ranges_resolve_to_their_intersection(tmp_path):
    merged = read_env_files([env_file(tmp_path, "train", "tqdm>=4.60"),
                             env_file(tmp_path, "eval", "tqdm<5,!=4.66.0")])
    item = merged["tqdm"]
    assert SpecifierSet(item.specifier) == SpecifierSet(">=4.60,<5,!=4.66.0")
    assert item.conflict["resolved_to"] == f"tqdm{item.specifier}"
    assert "uv picks the newest release in it" in item.conflict["why"]


def test_extras_are_unioned(tmp_path):
    merged = read_env_files([env_file(tmp_path, "train", "transformers[torch]==5.23.0"),
                             env_file(tmp_path, "eval", "transformers==5.23.0")])
    item = merged["transformers"]
    assert item.extras == ("torch",) and item.requirement_line() == "transformers[torch]==5.23.0"
    assert item.conflict["resolution"] == "union of extras"


@pytest.mark.parametrize("specs, ok", [
    ([">1.0", "<1.0.1"], True),
    ([">=2", "<2"], False),
    (["==2.13.0+cpu", "==2.13.0"], True),       # a local build satisfies the public pin (PEP 440)
    (["==2.13.0+cpu", "==2.13.0+cu126"], False),
    (["~=2.2", "<2.3"], True),
    (["==2.*", ">=3"], False),
    (["==1.5", "!=1.5"], False),
])
def test_satisfiability_of_specifier_pairs(specs, ok):
    witness = satisfying_version(specs)
    assert (witness is not None) is ok
    if ok:
        assert all(SpecifierSet(s).contains(witness, prereleases=True) for s in specs)


def test_conda_python_pins_must_agree(tmp_path):
    files = [env_file(tmp_path, "train", "torch==2.13.0"),
             env_file(tmp_path, "data", "pyyaml==6.0.3", conda=("python=3.12.1",))]
    with pytest.raises(SnaketuneError,
                       match=r"python==3.11.7.*python==3.12.1|python==3.12.1.*python==3.11.7"):
        read_env_files(files)


# ---------------------------------------------------------------- categories and variants


def test_categories_follow_the_env_files_that_ask():
    merged = read_env_files(ENVS)
    cat = {name: envlock.package_category(item) for name, item in merged.items() if item.kind == "pip"}
    assert cat["torch"] == "training"      # train, eval, export, verify
    assert cat["pyyaml"] == "data"         # asked by nearly everyone: data wins
    assert cat["gguf"] == "export" and cat["llama-cpp-python"] == "export"
    assert cat["uv"] == "tooling" and cat["snakemake"] == "tooling"
    assert cat["pytest"] == "test" and cat["hypothesis"] == "test"


def test_transitive_packages_take_their_dependents_category():
    merged = merge_requests(read_env_file(REPO / "envs" / "test.yaml")
                            + read_env_file(REPO / "envs" / "train.yaml"))
    pins = {"pytest": ("pytest==9.2.0", ["-r requirements.in"]),
            "pluggy": ("pluggy==1.7.0", ["pytest"]),
            "torch": ("torch==2.13.0", ["-r requirements.in"]),
            "sympy": ("sympy==1.14.0", ["torch"]),
            "mpmath": ("mpmath==1.3.0", ["sympy"]),
            "packaging": ("packaging==25.0", ["pytest", "torch"])}
    cats = envlock.categorise(merged, pins)
    assert cats == {"pytest": "test", "pluggy": "test", "torch": "training", "sympy": "training",
                    "mpmath": "training", "packaging": "training"}


def test_cpu_variant_asks_for_the_local_cpu_build():
    merged = read_env_files(ENVS)
    settings = envlock.load_settings(SETTINGS)
    cpu, cuda = compile_inputs(merged, "cpu", settings), compile_inputs(merged, "cuda", settings)
    assert "torch==2.13.0+cpu" in cpu and "torch==2.13.0" not in cpu
    assert "torch==2.13.0" in cuda
    assert set(cpu) - {"torch==2.13.0+cpu"} == set(cuda) - {"torch==2.13.0"}
    assert "python==3.11.7" not in cpu and not any(line.startswith("pip==") for line in cpu)


def test_cpu_variant_needs_an_exact_torch_pin(tmp_path):
    merged = read_env_files([env_file(tmp_path, "train", "torch>=2.5")])
    with pytest.raises(SnaketuneError, match=r"torch>=2.5 is not an exact pin"):
        compile_inputs(merged, "cpu", envlock.load_settings(SETTINGS))


FAKE_UV = """\
import sys
from pathlib import Path
assert Path("requirements.in").read_text().splitlines() == {lines!r}, Path("requirements.in").read_text()
print("numpy==2.4.6              # via torch, -r requirements.in")
print("torch==2.13.0+cpu         # via -r requirements.in")
print("{extra}")
"""


def _fake_uv(tmp_path, lines, extra="sympy==1.14.0  # via torch"):
    script = tmp_path / "fake_uv.py"
    script.write_text(FAKE_UV.format(lines=lines, extra=extra))
    return [sys.executable, str(script)]


def test_lock_text_is_deterministic_and_names_env_files(tmp_path):
    files = [env_file(tmp_path, "train", "torch==2.13.0"),
             env_file(tmp_path, "export", "torch==2.13.0", "numpy==2.4.6")]
    uv = _fake_uv(tmp_path, ["numpy==2.4.6", "torch==2.13.0+cpu"])
    a = lock_environments(files, SETTINGS, "cpu", find_links=["/opt/wheels"], uv=uv)
    b = lock_environments(files, SETTINGS, "cpu", find_links=["/opt/wheels"], uv=uv)
    assert a.text == b.text
    body = [line for line in a.text.splitlines() if not line.startswith("#")]
    assert body == ["numpy==2.4.6  # via envs/export.yaml, torch",  # sorted by name, env files first
                    "sympy==1.14.0  # via torch",
                    "torch==2.13.0+cpu  # via envs/export.yaml, envs/train.yaml"]
    header = "variant=cpu python=3.11.7 platform=x86_64-manylinux_2_28 exclude-newer=2026-11-20T00:00:00Z"
    assert header in a.text
    assert str(tmp_path) not in a.text
    report = a.report
    assert report["packages"]["torch"]["requested_by"] == {"envs/export.yaml": "==2.13.0",
                                                           "envs/train.yaml": "==2.13.0"}
    assert report["packages"]["sympy"] == {"locked": "1.14.0", "category": "training", "direct": False,
                                           "via": ["torch"]}
    assert report["packages"]["numpy"]["category"] == "export"
    assert report["cuda_packages"] == [] and report["conflicts"] == []


def test_cpu_lock_with_cuda_packages_is_refused(tmp_path):
    files = [env_file(tmp_path, "train", "torch==2.13.0")]
    uv = _fake_uv(tmp_path, ["torch==2.13.0+cpu"], extra="nvidia-cublas==13.1.1.3  # via torch")
    with pytest.raises(SnaketuneError, match="CPU lock pulls CUDA packages"):
        lock_environments(files, SETTINGS, "cpu", find_links=["/x"], uv=uv)


def test_cpu_lock_without_find_links_says_how_to_fix(tmp_path):
    with pytest.raises(SnaketuneError) as err:
        lock_environments([env_file(tmp_path, "train", "torch==2.13.0")], SETTINGS, "cpu", find_links=[])
    assert "PIP_FIND_LINKS" in err.value.fix


def test_pip_find_links_come_from_pip_settings(monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_FIND_LINKS", "/a/wheels /b/wheels")
    assert envlock.pip_find_links() == ["/a/wheels", "/b/wheels"]


def test_a_conflict_leaves_no_lock_behind(tmp_path):
    files = [env_file(tmp_path, "train", "torch==2.13.0"), env_file(tmp_path, "eval", "torch==2.11.0")]
    out = tmp_path / "results" / "env"
    with pytest.raises(SnaketuneError):
        write_lock(files, SETTINGS, out / "requirements.lock.txt", out / "lock_report.json", variant="cuda")
    assert not out.exists() or list(out.iterdir()) == []


# ---------------------------------------------------------------- the committed locks


def test_every_env_dependency_is_pinned_exactly():
    for path in ENVS:
        for req in read_env_file(path):
            assert envlock.exact_pin(req.specifier), (
                f"{path.name}: {req.name}{req.specifier} is not an exact pin"
            )


@pytest.mark.parametrize("variant", envlock.VARIANTS)
def test_every_env_pin_agrees_with_the_committed_lock(variant):
    pins = read_lock(COMMITTED[variant])["pins"]
    for path in ENVS:
        for req in read_env_file(path):
            if req.kind == "conda":
                continue
            assert req.name in pins, f"{path.name} asks {req.name}, missing from {COMMITTED[variant].name}"
            assert SpecifierSet(req.specifier).contains(Version(pins[req.name]), prereleases=True), \
                f"{path.name}: {req.name}{req.specifier} vs lock {pins[req.name]}"


def test_committed_locks_differ_only_in_the_torch_build():
    cpu, cuda = (read_lock(COMMITTED[v]) for v in ("cpu", "cuda"))
    assert cpu["variant"] == "cpu" and cuda["variant"] == "cuda" and cpu["python"] == "3.11.7"
    assert cpu["pins"]["torch"] == "2.13.0+cpu" and cuda["pins"]["torch"] == "2.13.0"
    assert envlock.cuda_packages(cpu["pins"]) == []
    assert len([n for n in cuda["pins"] if n.startswith("nvidia-")]) >= 10
    shared = set(cpu["pins"]) & set(cuda["pins"])
    assert set(cpu["pins"]) - {"torch"} <= shared
    assert all(cpu["pins"][n] == cuda["pins"][n] for n in shared - {"torch"})


def _needs_find_links(variant):
    if variant == "cpu" and not envlock.pip_find_links():
        pytest.skip("pip has no find-links with the torch +cpu wheel on this machine")


@pytest.mark.parametrize("variant", envlock.VARIANTS)
def test_relocking_unchanged_env_files_keeps_the_committed_lock_byte_for_byte(variant):
    # The committed pins are uv's preferences, so what the index lists today cannot move them.
    _needs_find_links(variant)
    committed = COMMITTED[variant].read_text()
    result = lock_environments(ENVS, SETTINGS, variant, preferences=committed)
    assert result.text == committed, \
        f"envs/lock/requirements.{variant}.txt is stale: run `python -m snaketune.envlock write`"
    assert result.report["package_count"] == len(read_lock(COMMITTED[variant])["pins"])


def test_a_changed_env_file_changes_only_what_it_must(tmp_path):
    # psutil is asked by two env files and nothing depends on it: lowering its pin there must move that
    # one line of the lock and leave every other pin (and the header) as committed.
    envs = tmp_path / "envs"
    envs.mkdir()
    for path in ENVS:
        (envs / path.name).write_text(path.read_text().replace("psutil==7.2.2", "psutil==7.2.1"))
    committed = COMMITTED["cuda"].read_text()
    result = lock_environments(sorted(envs.glob("*.yaml")), SETTINGS, "cuda", preferences=committed)
    before, after = committed.splitlines(), result.text.splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(changed) == 1
    old, new = changed[0]
    assert old.startswith("psutil==7.2.2  # via envs/tooling.yaml, envs/verify.yaml")
    assert new == old.replace("psutil==7.2.2", "psutil==7.2.1")
    assert envlock.pin_changes(committed, result.text) == [
        {"package": "psutil", "locked": "7.2.2", "resolvable": "7.2.1"}]


def test_an_older_pin_is_kept_and_reported_as_drift():
    # A lock holding an older certifi than the index offers: re-locking keeps it (no failure), and the
    # drift check names the package, the pin kept and what a fresh resolution would pick instead.
    committed = COMMITTED["cuda"].read_text()
    locked = read_lock(COMMITTED["cuda"])["pins"]["certifi"]
    older = committed.replace(f"certifi=={locked}", "certifi==2025.8.3")
    assert older != committed
    kept = lock_environments(ENVS, SETTINGS, "cuda", preferences=older)
    assert kept.text == older
    drift = envlock.index_drift(ENVS, SETTINGS, "cuda", kept.text)
    assert drift["checked"] is True
    certifi = [d for d in drift["packages"] if d["package"] == "certifi"]
    assert len(certifi) == 1 and certifi[0]["locked"] == "2025.8.3"
    assert Version(certifi[0]["resolvable"]) > Version("2025.8.3")
    assert any("certifi: 2025.8.3 -> " in line for line in envlock.drift_lines(drift, "cuda"))


def test_upgrade_package_moves_only_that_pin():
    committed = COMMITTED["cuda"].read_text()
    older = committed.replace(f"certifi=={read_lock(COMMITTED['cuda'])['pins']['certifi']}",
                              "certifi==2025.8.3")
    moved = lock_environments(ENVS, SETTINGS, "cuda", preferences=older, upgrade_packages=["certifi"])
    changes = envlock.pin_changes(older, moved.text)
    assert [d["package"] for d in changes] == ["certifi"]
    assert Version(changes[0]["resolvable"]) > Version("2025.8.3")


def test_drift_when_the_index_cannot_be_asked_is_a_note_not_an_error(tmp_path):
    files = [env_file(tmp_path, "train", "torch==2.13.0")]
    failing_uv = [sys.executable, "-c", "import sys; sys.stderr.write('network unreachable'); sys.exit(2)"]
    drift = envlock.index_drift(files, SETTINGS, "cuda", "torch==2.13.0\n", uv=failing_uv)
    assert drift["checked"] is False and "network unreachable" in drift["error"]
    assert envlock.drift_lines(drift, "cuda")[0].startswith("drift: not checked")


def test_pin_changes_lists_moved_added_and_dropped_packages():
    old = "a==1.0  # via x\nb==2.0\nc==3.0\n"
    new = "a==1.1  # via x\nb==2.0\nd==4.0\n"
    assert envlock.pin_changes(old, new) == [
        {"package": "a", "locked": "1.0", "resolvable": "1.1"},
        {"package": "c", "locked": "3.0", "resolvable": None},
        {"package": "d", "locked": None, "resolvable": "4.0"},
    ]


def test_the_uv_call_keeps_the_given_pins_as_its_output_file(tmp_path):
    # uv prefers the pins of its --output-file; the call must hand it the preferences there.
    files = [env_file(tmp_path, "train", "torch==2.13.0")]
    script = tmp_path / "uv_args.py"
    script.write_text("import sys, pathlib\n"
                      "args = sys.argv[1:]\n"
                      "out = args[args.index('--output-file') + 1]\n"
                      "assert pathlib.Path(out).read_text() == 'torch==2.13.0  # kept\\n'\n"
                      "assert args.count('--upgrade-package') == 1 and 'sympy' in args\n"
                      "print('torch==2.13.0  # via -r requirements.in')\n")
    result = lock_environments(files, SETTINGS, "cuda", uv=[sys.executable, str(script)],
                               preferences="torch==2.13.0  # kept\n", upgrade_packages=["sympy"])
    assert "torch==2.13.0  # via envs/train.yaml" in result.text


# ---------------------------------------------------------------- verify


def facts(**over):
    base = {
        "python": "3.11.7",
        "platform": "Linux x86_64",
        "torch": {"installed": True, "version": "2.13.0+cpu", "cuda_build": None, "cuda": False, "mps": False,
                  "gpus": [], "bf16": True},
        "installed": {"torch": "2.13.0+cpu", "pyyaml": "6.0.3"},
        "disk_free_gb": 50.0,
        "disk_path": "results",
        "memory": {"total_gb": 32.0, "available_gb": 20.0},
        "data": {},
    }
    base.update(over)
    return base


LOCK = {"pins": {"torch": "2.13.0+cpu", "pyyaml": "6.0.3"}, "python": "3.11.7", "variant": "cpu"}


def statuses(checks):
    return {c.name: c.status for c in checks}


def test_a_healthy_cpu_machine_passes_with_a_device_warning():
    checks = run_checks(facts(), LOCK)
    assert statuses(checks) == {"python": "pass", "torch": "pass", "device": "warn", "gpus": "pass",
                                "bf16": "pass", "lock": "pass", "disk": "pass", "ram": "pass", "data": "pass"}
    assert verify.overall(checks) == "warn"


def test_a_gpu_machine_lists_its_gpus():
    torch = {"installed": True, "version": "2.13.0", "cuda_build": "13.0", "cuda": True,
             "mps": False, "bf16": True,
             "gpus": [{"name": "NVIDIA H100", "memory_gb": 79.2, "capability": "9.0"},
                      {"name": "Tiny GPU", "memory_gb": 4.0, "capability": "7.5"}]}
    checks = {c.name: c for c in run_checks(facts(torch=torch), LOCK, {"require_gpu": True})}
    assert checks["device"].status == "pass" and checks["device"].detail == "CUDA with 2 GPU(s)"
    assert checks["gpus"].status == "warn" and checks["gpus"].detail == "NVIDIA H100 79.2 GB, Tiny GPU 4.0 GB"
    assert checks["bf16"].detail == "bf16 supported on the GPU"


def test_require_gpu_on_a_cpu_build_fails_with_a_fix():
    checks = {c.name: c for c in run_checks(facts(), LOCK, {"require_gpu": True})}
    assert checks["device"].status == "fail"
    assert "torch is a CPU-only build" in checks["device"].detail
    assert "verify.require_gpu: false" in checks["device"].fix


def test_limits_fail_and_warn():
    checks = statuses(run_checks(facts(disk_free_gb=1.5, memory={"total_gb": 1.0, "available_gb": 0.5},
                                       python="3.9.18"), LOCK, {"min_free_disk_gb": 2, "min_ram_gb": 2}))
    assert checks["disk"] == checks["ram"] == checks["python"] == "fail"
    checks = statuses(run_checks(facts(disk_free_gb=3.0, memory={"total_gb": 8.0, "available_gb": 1.0},
                                       python="3.12.4"), LOCK, {"min_free_disk_gb": 2, "min_ram_gb": 2}))
    assert checks["disk"] == checks["ram"] == checks["python"] == "warn"


def test_missing_torch_fails():
    checks = statuses(run_checks(facts(torch={"installed": False, "error": "No module named 'torch'"}), LOCK))
    assert checks["torch"] == checks["bf16"] == "fail"


def test_drift_against_a_lock_file_is_listed(tmp_path):
    lock_file = tmp_path / "requirements.cpu.txt"
    lock_file.write_text("# snaketune-lock: variant=cpu python=3.11.7 platform=x\n"
                         "torch==2.13.0+cpu  # via envs/train.yaml\nPyYAML==6.0.3\n"
                         "numpy==2.4.6  # via torch\n"
                         "jinja2==3.1.6\n")
    lock = read_lock(lock_file)
    assert lock == {"pins": {"torch": "2.13.0+cpu", "pyyaml": "6.0.3", "numpy": "2.4.6", "jinja2": "3.1.6"},
                    "python": "3.11.7", "variant": "cpu"}
    installed = {"torch": "2.13.0+cpu", "pyyaml": "6.0.3", "numpy": "2.3.0", "jinja2": "3.1.6.0"}
    drift, missing = lock_drift(lock["pins"], installed)
    assert drift == [{"package": "numpy", "locked": "2.4.6", "installed": "2.3.0"}] and missing == []
    check = {c.name: c for c in run_checks(facts(installed=installed), lock,
                                           lock_path="envs/lock/requirements.cpu.txt")}
    assert check["lock"].status == "warn"
    assert "numpy 2.3.0 (lock 2.4.6)" in check["lock"].detail
    assert check["lock"].fix == "pip install -r envs/lock/requirements.cpu.txt"
    _, missing = lock_drift(lock["pins"], {"torch": "2.13.0+cpu"})
    assert missing == ["jinja2", "numpy", "pyyaml"]


def test_the_installed_torch_build_picks_the_lock():
    locks = {"cpu": "envs/lock/requirements.cpu.txt", "cuda": "envs/lock/requirements.cuda.txt"}
    assert verify.lock_for_torch(locks, None) == locks["cpu"]
    assert verify.lock_for_torch(locks, "13.0") == locks["cuda"]


def test_missing_data_fails_and_writes_nothing(tmp_path):
    out = tmp_path / "results" / "env" / "verify.json"
    present = tmp_path / "mine.jsonl"
    present.write_text('{"instruction": "x", "output": "y"}\n')
    missing = str(tmp_path / "typo.jsonl")
    bad = facts(data={str(present): present.stat().st_size, missing: None})
    with pytest.raises(SnaketuneError) as err:
        verify_environment({"cpu": COMMITTED["cpu"]}, [str(present), missing], out, facts=bad)
    assert err.value.path == missing
    assert "data: configured data missing" in str(err.value) and "data.sources[].path" in err.value.fix
    assert not out.exists()


def test_verify_writes_the_report_and_a_table(tmp_path, capsys):
    out = tmp_path / "verify.json"
    good = facts(installed=dict(read_lock(COMMITTED["cpu"])["pins"]))
    report = verify_environment({"cpu": COMMITTED["cpu"], "cuda": COMMITTED["cuda"]}, [], out, facts=good)
    assert json.loads(out.read_text()) == report
    assert report["status"] == "warn" and report["lock"] == str(COMMITTED["cpu"])
    assert {c["name"]: c["status"] for c in report["checks"]}["lock"] == "pass"
    table = capsys.readouterr().out
    assert "check" in table.splitlines()[0] and "device  WARN" in table


def test_real_machine_facts_are_sane():
    real = verify.gather_facts([], workdir=REPO)
    assert real["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert real["torch"]["installed"] and real["torch"]["bf16"] in (True, False)
    assert real["memory"]["total_gb"] > 0 and real["disk_free_gb"] > 0
    assert real["installed"]["pyyaml"]


def test_env_files_are_conda_env_files_with_pip_sections():
    import yaml

    for path in ENVS:
        env = yaml.safe_load(path.read_text())
        assert env["channels"] == ["conda-forge", "nodefaults"], path.name
        assert env["dependencies"][:2] == ["python=3.11.7", "pip=23.2.1"], path.name
        assert isinstance(env["dependencies"][2]["pip"], list) and env["dependencies"][2]["pip"], path.name


# ---------------------------------------------------------------- the rules, run by Snakemake


ENV_TARGETS = ("results/env/requirements.lock.txt", "results/env/lock_report.json", "results/env/verify.json")
NO_PROFILE = ("--workflow-profile", "none")  # these rules need no profile settings


def _default_config():
    import yaml

    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.e2e
def test_lock_and_verify_rules_reproduce_the_committed_lock(tmp_path):
    from pipeline import planned_jobs, run_pipeline

    work = run_pipeline(tmp_path / "w", _default_config(), targets=[*NO_PROFILE, *ENV_TARGETS])
    report = json.loads((work / "results/env/lock_report.json").read_text())
    variant = report["variant"]
    assert (work / "results/env/requirements.lock.txt").read_text() == COMMITTED[variant].read_text()
    assert report["committed_lock"] == {"path": f"envs/lock/requirements.{variant}.txt", "matches": True}
    # what the index would move is reported beside the lock, never a failure
    assert set(report["index_drift"]) == {"checked", "packages"} or report["index_drift"]["checked"] is False
    assert all(set(d) == {"package", "locked", "resolvable"} for d in report["index_drift"]["packages"])
    log = (work / "logs/env/lock.log").read_text()
    assert "keeping the pins of" in log and "drift: " in log
    assert report["packages"]["torch"]["category"] == "training"
    assert set(report["categories"]) == set(envlock.CATEGORIES)
    checks = json.loads((work / "results/env/verify.json").read_text())
    assert checks["status"] in ("pass", "warn")
    assert [c["name"] for c in checks["checks"]] == ["python", "torch", "device", "gpus",
                                                     "bf16", "lock", "disk", "ram", "data"]
    log = (work / "logs/env/verify.log").read_text()
    assert "python  PASS    Python 3." in log and "verify: " in log
    assert planned_jobs(work, *NO_PROFILE, *ENV_TARGETS) == {}


@pytest.mark.e2e
def test_a_failing_check_stops_the_pipeline_with_its_fix(tmp_path):
    from pipeline import make_workdir, snakemake

    config = _default_config()
    config["verify"] = {"min_free_disk_gb": 10**7}
    work = make_workdir(tmp_path / "w", config)
    proc = snakemake(work, *NO_PROFILE, "results/env/verify.json", check=False)
    assert proc.returncode != 0
    assert "disk:" in proc.stderr and "lower verify.min_free_disk_gb" in proc.stderr
    assert not (work / "results/env/verify.json").exists()
