# Export stage: merged checkpoint, GGUF files (model and LoRA), parity in llama.cpp, Ollama Modelfile.
# Logic lives in snaketune.merge, snaketune.gguf_export, snaketune.parity and snaketune.modelfile.


rule merge:
    input:
        adapter="results/adapters/{specialist}",
        base=base_model_input,
    output:
        directory("results/merged/{specialist}"),
    params:
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
        base_model=config["base_model"],
    threads: specialist_threads
    resources:
        gpu=specialist_gpus,
        mem_mb=specialist_mem_mb,
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
        provenance=PROVENANCE,
        source=gguf_source,
        revision=None,
        name="{specialist}",
        untie=False,
        template="model",
    threads: 1
    resources:
        mem_mb=specialist_mem_mb,
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
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
        source=config["base_model"]["name_or_path"],
        revision=config["base_model"].get("revision"),
        name="base",
        # LoRA GGUFs may adapt embed_tokens / lm_head apart, so the base keeps output.weight of its own
        untie=True,
        # the chat format the adapters were trained in (snaketune.chat_format), not only the base's own
        template="format",
        chat_template=config["base_model"].get("chat_template"),
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
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
        base_model=config["base_model"],
    threads: 1
    resources:
        mem_mb=specialist_mem_mb,
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
        provenance=PROVENANCE,
        settings=specialist_spec,
        quants=EXPORT_QUANTS,
        base_quant=LORA_BASE_QUANT,
        prompts=EXPORT["parity_prompts"],
    threads: specialist_threads
    resources:
        mem_mb=specialist_mem_mb,
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
        provenance=PROVENANCE,
        system_prompt=specialist_system_prompt,
        name="{specialist}",
    log:
        "logs/export/modelfile/{specialist}.log",
    conda:
        "../../envs/export.yaml"
    script:
        "../scripts/write_modelfile.py"
