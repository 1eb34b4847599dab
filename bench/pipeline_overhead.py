"""Pipeline overhead: invoking the workflow on an up-to-date results tree, and what one config edit reruns.

A scratch checkout (tests/pipeline.py's ``make_workdir``: links to the code, its own config) with a tiny
config (two specialists, export on) is run once in full. Then:

* no-op invocation: ``snakemake --cores 2 --resources gpu=1`` on the finished tree, timed (median of
  ``--repeats``); goal <= 2 s and 0 jobs. Baseline, measured alike in the same run: Snakemake itself on
  a one-rule Snakefile whose output exists (the floor any Snakemake workflow pays).
* one edit: ``train.lr`` of one specialist changed in the config, then a dry run; the jobs it plans
  (rule and wildcards) must be exactly that specialist's chain (train, its eval, merge, GGUFs, parity,
  Modelfile, and the summaries that list every specialist) and nothing of the other specialist's.

    python bench/pipeline_overhead.py            # first run ~3-6 min (the full tiny pipeline), then ~30 s
    python bench/pipeline_overhead.py --quick    # export off, one timed repeat
"""

from __future__ import annotations

import copy
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

sys.path.insert(0, str(common.REPO / "tests"))

from pipeline import make_workdir, planned_jobs, snakemake, tiny_config  # noqa: E402

GOAL_S = 2.0
EDITED, OTHER = "veran-tools", "mesen-runner"
CONFIG = tiny_config(train={"max_steps": 4, "save_steps": 4},
                     eval_cfg={"max_new_tokens": 16, "max_examples": 4})
CONFIG["export"] = {"enabled": True, "quants": ["f16", "q8_0"], "lora_gguf": True, "parity": True,
                    "parity_prompts": 1}
assert set(CONFIG["specialists"]) == {EDITED, OTHER}
# Jobs that list every specialist: they rerun when any one changes.
AGGREGATES = {"eval_summary", "report_tables", "parity_table"}
FLOOR_SNAKEFILE = 'rule all:\n    output: "done.txt"\n    shell: "touch {output}"\n'


def dry_run_jobs(workdir) -> list[dict]:
    """Every job a dry run plans: rule, wildcards, reason (parsed from Snakemake's job listing)."""
    proc = snakemake(workdir, "-n")
    jobs, current = [], None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):\s*$", line)
        if m:
            current = {"rule": m.group(1), "wildcards": {}, "reason": None}
            jobs.append(current)
            continue
        if current is None:
            continue
        if not line.strip():
            current = None
            continue
        key, _, value = line.strip().partition(": ")
        if key == "wildcards":
            current["wildcards"] = dict(part.split("=", 1) for part in value.split(", ") if "=" in part)
        elif key == "reason":
            current["reason"] = value
    return [j for j in jobs if j["rule"] != "all"]


def snakemake_version() -> str:
    import snakemake as sm

    return getattr(sm, "__version__", "unknown")


def timed(cmd_args, workdir, repeats: int) -> dict:
    times, outputs = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = snakemake(workdir, *cmd_args)
        times.append(time.perf_counter() - started)
        outputs.append(proc.stdout + proc.stderr)
    text = outputs[-1]
    return {"median_s": round(statistics.median(times), 3), "all_s": [round(t, 3) for t in times],
            "nothing_to_be_done": "Nothing to be done" in text, "output_tail": text[-400:]}


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fresh", action="store_true",
                        help="delete the scratch run first (rebuilds everything)")
    args = parser.parse_args(argv)
    config = copy.deepcopy(CONFIG)
    if args.quick:
        args.repeats = 1
        config["export"]["enabled"] = False
    work = args.workdir / ("pipeline_overhead.quick" if args.quick else "pipeline_overhead")
    if args.fresh and work.exists():
        import shutil

        shutil.rmtree(work)
    make_workdir(work, config)

    print(f"pipeline overhead: scratch run in {work}", flush=True)
    started = time.perf_counter()
    snakemake(work)
    full_s = round(time.perf_counter() - started, 1)
    print(f"  full run (or catch-up): {full_s} s", flush=True)

    floor_dir = args.workdir / "pipeline_overhead.floor"
    floor_dir.mkdir(parents=True, exist_ok=True)
    (floor_dir / "Snakefile").write_text(FLOOR_SNAKEFILE)
    snakemake(floor_dir)
    noop = timed([], work, args.repeats)
    floor = timed([], floor_dir, args.repeats)
    noop_jobs = planned_jobs(work)
    print(f"  no-op invocation: {noop['median_s']} s (all: {noop['all_s']}), "
          f"planned jobs {sum(noop_jobs.values())}; one-rule Snakefile: {floor['median_s']} s", flush=True)

    edited = copy.deepcopy(config)
    spec = edited["specialists"][EDITED]
    spec["train"] = dict(spec.get("train") or {}, lr=config["defaults"]["train"]["lr"] * 2)
    make_workdir(work, edited)
    try:
        jobs = dry_run_jobs(work)
        counts = planned_jobs(work)
    finally:
        make_workdir(work, config)  # the scratch run stays up to date for the next time
    print(f"\njobs planned after changing specialists.{EDITED}.train.lr:")
    for job in jobs:
        wc = ", ".join(f"{k}={v}" for k, v in job["wildcards"].items())
        print(f"  {job['rule']:14s} {wc:32s} {(job['reason'] or '')[:90]}")
    outside = [j for j in jobs if j["rule"] not in AGGREGATES and j["wildcards"].get("specialist") != EDITED]
    expected = {"train", "evaluate_tuned", "eval_summary", "report_tables"}
    if config["export"]["enabled"]:
        expected |= {"merge", "gguf", "lora_gguf", "gguf_parity", "modelfile", "parity_table"}
    rules = {j["rule"] for j in jobs}
    exact = not outside and rules == expected
    extra = sorted(rules - expected)
    print(f"\n  only {EDITED}'s chain: {'yes' if exact else 'NO'}"
          + (f"; other specialists' jobs: {[(j['rule'], j['wildcards']) for j in outside]}"
             if outside else "")
          + (f"; jobs beyond the chain: {extra}" if extra else "")
          + (f"; missing: {sorted(expected - rules)}" if expected - rules else ""))
    for job in jobs:
        if job["rule"] in extra:
            print(f"    {job['rule']} {job['wildcards']}: {job['reason']}")
    met_time = noop["median_s"] <= GOAL_S and sum(noop_jobs.values()) == 0
    print(f"  no-op {noop['median_s']} s = {common.ratio(noop['median_s'], floor['median_s'])}x "
          f"the one-rule floor; goal <= {GOAL_S} s and 0 jobs: {'met' if met_time else 'MISSED'}")
    common.write_result(common.result_path(__file__, args), {
        "benchmark": "pipeline_overhead", "machine": common.machine(), "quick": args.quick,
        "snakemake": snakemake_version(), "config": config, "full_run_s": full_s,
        "noop": {**noop, "planned_jobs": noop_jobs}, "floor_one_rule_snakefile": floor,
        "ratio_noop_vs_floor": common.ratio(noop["median_s"], floor["median_s"]),
        "edit": {"changed": f"specialists.{EDITED}.train.lr", "jobs": jobs, "counts": counts,
                 "expected_rules": sorted(expected), "only_that_specialists_chain": exact,
                 "other_specialists_jobs": outside, "rules_beyond_the_chain": extra},
        "goals": {"noop_seconds": {"goal": f"<= {GOAL_S} s, 0 jobs", "value": noop["median_s"],
                                   "met": met_time},
                  "edit_reruns_one_chain": {"goal": "exactly the edited specialist's chain", "met": exact}},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
