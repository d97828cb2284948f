rule finetune:
    """Stage 4: fine-tune with auxiliary outliers (method none keeps the pretrained model)."""
    input:
        paths.DATA_DIR,
        **paths.templates(paths.PRETRAIN_DIR, paths.PRETRAIN_FILES),
        basis=paths.templates(paths.SUBSPACE_DIR, paths.SUBSPACE_FILES)["basis"],
    output:
        **paths.templates(paths.CELL_DIR, paths.FINETUNE_FILES),
    log:
        log_path("finetune", "{benchmark}", "{method}", "{seed}"),
    threads: lambda wildcards: max(TRAIN_THREADS, processes(wildcards.benchmark))  # >= 1 a DDP rank
    resources:
        mem_mb=lambda wildcards: scale(wildcards.benchmark, "mem_mb", 4000),
        runtime=lambda wildcards: scale(wildcards.benchmark, "runtime", 480),
        # DDP: one GPU per process; `none` only copies the pretrained model
        gpu=lambda wildcards: 0 if wildcards.method == "none" else GPU * processes(wildcards.benchmark),
    shell:
        "python -m fsood finetune --params params.yaml --benchmark {wildcards.benchmark}"
        " --method {wildcards.method} --seed {wildcards.seed} --log {log}"
