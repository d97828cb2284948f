rule report:
    """Stage 6: tables (mean +- std over seeds) and figures of one benchmark."""
    input:
        report_inputs,
        paper="src/fsood/paper_results.yaml",  # the published numbers: a corrected value reruns the report
    output:
        table_md=report(REPORT["table_md"], category="Tables", labels={"benchmark": "{benchmark}", "kind": "summary"}),
        table_csv=REPORT["table_csv"],
        summary=REPORT["summary"],
        paper_md=report(REPORT["paper_md"], category="Tables",
                        labels={"benchmark": "{benchmark}", "kind": "paper comparison"}),
        paper_csv=REPORT["paper_csv"],
        histograms=report(REPORT["histograms"], caption="../report/histograms.rst", category="Figures",
                          labels={"benchmark": "{benchmark}", "figure": "score histograms"}),
        projection=report(REPORT["projection"], caption="../report/projection.rst", category="Figures",
                          labels={"benchmark": "{benchmark}", "figure": "Fig. 2 projection"}),
        heatmap=report(REPORT["heatmap"], caption="../report/heatmap.rst", category="Figures",
                       labels={"benchmark": "{benchmark}", "figure": "FPR95 heatmap"}),
        nc=report(REPORT["nc"], caption="../report/nc.rst", category="Figures",
                  labels={"benchmark": "{benchmark}", "figure": "NC metrics"}),
        curves=report(REPORT["curves"], caption="../report/curves.rst", category="Figures",
                      labels={"benchmark": "{benchmark}", "figure": "training curves"}),
    log:
        log_path("report", "{benchmark}"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m fsood report --params params.yaml --benchmark {wildcards.benchmark} --log {log}"
