rule pretrain:
    """Stage 2: train the ID classifier with cross-entropy."""
    input:
        paths.DATA_DIR,
    output:
        **paths.templates(paths.PRETRAIN_DIR, paths.PRETRAIN_FILES),
    log:
        log_path("pretrain", "{benchmark}", "{seed}"),
    threads: TRAIN_THREADS
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=GPU,
    shell:
        "python -m fsood pretrain --params params.yaml --benchmark {wildcards.benchmark} --seed {wildcards.seed} --log {log}"
