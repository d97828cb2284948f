rule score:
    """Stage 5: one forward pass per test set into the cache; every score from the cache."""
    input:
        paths.DATA_DIR,
        paths.templates(paths.CELL_DIR, paths.FINETUNE_FILES)["model"],
    output:
        **paths.templates(paths.CELL_DIR, paths.SCORE_FILES),
    log:
        log_path("score", "{benchmark}", "{method}", "{seed}"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=GPU,
    shell:
        "python -m fsood score --params params.yaml --benchmark {wildcards.benchmark}"
        " --method {wildcards.method} --seed {wildcards.seed} --log {log}"
