# Environment stage: the merged requirements lock (rule lock) and the machine check (rule verify).
# Logic lives in snaketune.envlock and snaketune.verify.


# Resolving needs PyPI, which compute nodes may not reach: run it where snakemake runs.
localrules:
    lock,


rule lock:
    input:
        envs=env_files(),
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
        data=user_data_paths(),
    output:
        "results/env/verify.json",
    params:
        provenance=PROVENANCE,
        data=user_data_paths(),
        settings=config["verify"],
    resources:
        gpu=verify_gpus(),
    log:
        "logs/env/verify.log",
    conda:
        "../../envs/verify.yaml"
    script:
        "../scripts/verify_environment.py"
