rule data:
    """Stage 1: materialise every set of a benchmark as uint8 arrays."""
    output:
        directory(paths.DATA_DIR),
    log:
        log_path("data", "{benchmark}"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m fsood data --params params.yaml --benchmark {wildcards.benchmark} --log {log}"
