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
    threads: TRAIN_THREADS
    resources:
        mem_mb=4000,
        runtime=480,
        gpu=GPU,
    shell:
        "python -m fsood finetune --params params.yaml --benchmark {wildcards.benchmark}"
        " --method {wildcards.method} --seed {wildcards.seed} --log {log}"
