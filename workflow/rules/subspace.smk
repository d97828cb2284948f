rule subspace:
    """Stage 3: ID training features, NC1-NC4 and the basis of span(W)."""
    input:
        paths.DATA_DIR,
        paths.templates(paths.PRETRAIN_DIR, paths.PRETRAIN_FILES)["model"],
    output:
        **paths.templates(paths.SUBSPACE_DIR, paths.SUBSPACE_FILES),
    log:
        log_path("subspace", "{benchmark}", "{seed}"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=GPU,
    shell:
        "python -m fsood subspace --params params.yaml --benchmark {wildcards.benchmark} --seed {wildcards.seed} --log {log}"
