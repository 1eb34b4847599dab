# Environment stage: the merged requirements lock (rule lock) and the machine check (rule verify).
# Logic lives in snaketune.envlock and snaketune.verify.
import glob


# Resolving needs PyPI, which compute nodes may not reach: run it where snakemake runs.
localrules:
    lock,


rule lock:
    input:
        envs=sorted(glob.glob("envs/*.yaml")),  # every env file a rule names
        settings="envs/lock/resolve.yaml",
        committed=expand("envs/lock/requirements.{variant}.txt", variant=["cpu", "cuda"]),
    output:
        lock="results/env/requirements.lock.txt",
        report="results/env/lock_report.json",
    params:
        provenance=PROVENANCE,
    log:
        "logs/env/lock.log",
    conda:
        "../../envs/lock.yaml"
    script:
        "../scripts/lock_requirements.py"


rule verify:
    input:
        lock_cpu="envs/lock/requirements.cpu.txt",
        lock_cuda="envs/lock/requirements.cuda.txt",
        data=[source["path"] for source in config["data"]["sources"]],  # the user's files, not the demo
    output:
        "results/env/verify.json",
    params:
        provenance=PROVENANCE,
        data=[source["path"] for source in config["data"]["sources"]],
        settings=config["verify"],
    resources:
        gpu=1 if config["verify"]["require_gpu"] else 0,
    log:
        "logs/env/verify.log",
    conda:
        "../../envs/verify.yaml"
    script:
        "../scripts/verify_environment.py"


ALL_TARGETS.extend(
    ["results/env/requirements.lock.txt", "results/env/lock_report.json", "results/env/verify.json"]
)
