# One rule a stage, each made from its contract in src/fsood/contract.py (the same contract writes
# dvc.yaml): data -> pretrain -> subspace -> finetune -> score -> report. Each rule runs
# `python -m fsood <stage> ...`, logs to logs/<stage>/<cell>.log, and reruns when a declared params
# key, a file of its code or the content of an input changes (docs/pipeline.md, "What reruns after an edit").
for _stage in contract.STAGES.values():

    rule:
        name:
            _stage.name
        input:
            unpack(stage_inputs(_stage)),
        output:
            **stage_outputs(_stage),
        params:
            **stage_params(_stage),
            # the command, as a param: a shell directive in a loop is evaluated when the job runs,
            # with the loop's last stage, while params are bound now
            command=_stage.command(**{w: "{%s}" % w for w in _stage.wildcards}),
        log:
            _stage.log(**{w: "{%s}" % w for w in _stage.wildcards}),
        threads: stage_threads(_stage)
        resources:
            **stage_resources(_stage),
        shell:
            "{params.command}"
