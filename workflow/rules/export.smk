# Export stage: merged checkpoint, GGUF files (model and LoRA), parity in llama.cpp, Ollama Modelfile.
# Logic lives in snaketune.merge, snaketune.gguf_export, snaketune.parity and snaketune.modelfile.

EXPORT = config["export"]
EXPORT_QUANTS = list(EXPORT["quants"])
# The base GGUF that LoRA GGUFs apply to: the most precise configured type (parity holds it to that type's limits).
LORA_BASE_QUANT = next(q for q in ("f32", "f16", "q8_0") if q in EXPORT_QUANTS)
# Ollama runs the q8_0 file when there is one, else the most compact configured type.
MODELFILE_QUANT = next(q for q in ("q8_0", "f16", "f32") if q in EXPORT_QUANTS)
BASE_GGUF = f"results/gguf/base/base.{LORA_BASE_QUANT}.gguf"


def export_settings(wildcards):
    return specialist_settings(wildcards.specialist)


def export_system_prompt(wildcards):
    return export_settings(wildcards)["system_prompt"]


def export_resources(wildcards):
    return specialist_resources(wildcards.specialist)


def export_threads(wildcards):
    return export_resources(wildcards)["threads"]


def merge_gpus(wildcards):
    return export_resources(wildcards)["gpus"]


def export_mem_mb(wildcards):
    return export_resources(wildcards)["mem_mb"]


def parity_inputs(wildcards):
    """The merged model, every configured GGUF, and the base GGUF + LoRA GGUF when LoRA export is on."""
    inputs = {
        "merged": f"results/merged/{wildcards.specialist}",
        "test": "results/data/test.jsonl",
        "ggufs": expand("results/gguf/{specialist}.{quant}.gguf", specialist=wildcards.specialist,
                        quant=EXPORT_QUANTS),
    }
    if EXPORT["lora_gguf"]:
        inputs["lora"] = f"results/gguf/{wildcards.specialist}.lora.gguf"
        inputs["base_gguf"] = BASE_GGUF
    return inputs


rule merge:
    input:
        adapter="results/adapters/{specialist}",
        base=base_model_input,
    output:
        directory("results/merged/{specialist}"),
    params:
        base_model=config["base_model"],
    threads: export_threads
    resources:
        gpu=merge_gpus,
        mem_mb=export_mem_mb,
    log:
        "logs/export/merge/{specialist}.log",
    benchmark:
        "benchmarks/export/merge/{specialist}.tsv"
    conda:
        "../../envs/export.yaml"
    script:
        "../scripts/merge_adapter.py"


rule gguf:
    input:
        model="results/merged/{specialist}",
    output:
        "results/gguf/{specialist}.{quant}.gguf",
    params:
        source="results/merged/{specialist}",
        revision=None,
        name="{specialist}",
        untie=False,
        template="model",
    threads: 1
    resources:
        mem_mb=export_mem_mb,
    log:
        "logs/export/gguf/{specialist}.{quant}.log",
    benchmark:
        "benchmarks/export/gguf/{specialist}.{quant}.tsv"
    conda:
        "../../envs/export.yaml"
    script:
        "../scripts/write_gguf.py"


rule base_gguf:
    input:
        model=base_model_input,
    output:
        "results/gguf/base/base.{quant}.gguf",
    params:
        source=config["base_model"]["name_or_path"],
        revision=config["base_model"].get("revision"),
        name="base",
        # LoRA GGUFs may adapt embed_tokens / lm_head apart, so the base keeps output.weight of its own
        untie=True,
        # the chat template the adapters were trained on, whatever the hub model ships
        template="shared",
    threads: 1
    resources:
        mem_mb=4000,
    log:
        "logs/export/gguf/base.{quant}.log",
    benchmark:
        "benchmarks/export/gguf/base.{quant}.tsv"
    conda:
        "../../envs/export.yaml"
    script:
        "../scripts/write_gguf.py"


rule lora_gguf:
    input:
        adapter="results/adapters/{specialist}",
        base=base_model_input,
    output:
        "results/gguf/{specialist}.lora.gguf",
    params:
        base_model=config["base_model"],
    threads: 1
    resources:
        mem_mb=export_mem_mb,
    log:
        "logs/export/lora_gguf/{specialist}.log",
    benchmark:
        "benchmarks/export/lora_gguf/{specialist}.tsv"
    conda:
        "../../envs/export.yaml"
    script:
        "../scripts/write_lora_gguf.py"


rule gguf_parity:
    input:
        unpack(parity_inputs),
    output:
        "results/gguf/{specialist}.parity.json",
    params:
        settings=export_settings,
        quants=EXPORT_QUANTS,
        base_quant=LORA_BASE_QUANT,
        prompts=EXPORT["parity_prompts"],
    threads: export_threads
    resources:
        mem_mb=export_mem_mb,
    log:
        "logs/export/gguf_parity/{specialist}.log",
    benchmark:
        "benchmarks/export/gguf_parity/{specialist}.tsv"
    conda:
        "../../envs/export.yaml"
    script:
        "../scripts/check_gguf_parity.py"


rule modelfile:
    input:
        gguf=f"results/gguf/{{specialist}}.{MODELFILE_QUANT}.gguf",
        merged="results/merged/{specialist}",
    output:
        "results/gguf/{specialist}.Modelfile",
    params:
        system_prompt=export_system_prompt,
        name="{specialist}",
    log:
        "logs/export/modelfile/{specialist}.log",
    conda:
        "../../envs/export.yaml"
    script:
        "../scripts/write_modelfile.py"


if EXPORT["enabled"]:
    ALL_TARGETS.extend(expand("results/gguf/{specialist}.{quant}.gguf", specialist=SPECIALISTS, quant=EXPORT_QUANTS))
    ALL_TARGETS.extend(expand("results/gguf/{specialist}.Modelfile", specialist=SPECIALISTS))
    if EXPORT["lora_gguf"]:
        ALL_TARGETS.extend(expand("results/gguf/{specialist}.lora.gguf", specialist=SPECIALISTS))
        ALL_TARGETS.append(BASE_GGUF)
    if EXPORT["parity"]:
        ALL_TARGETS.extend(expand("results/gguf/{specialist}.parity.json", specialist=SPECIALISTS))
