# fsood: the paper's pipeline as a Snakemake workflow. Thin on purpose: the grid and every
# hyper-parameter live in params.yaml, each stage's contract (inputs, outputs, params, code,
# resources) in src/fsood/contract.py, from which workflow/rules/stages.smk makes one rule a stage
# and `python -m fsood dvc-yaml` writes dvc.yaml: both tools run the same commands.
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"


# One orchestrator per workspace (src/fsood/lock.py): a real run (not -n) holds
# .snakemake/fsood.lock, and refuses to start while `dvc repro` runs here.
from fsood import lock as fsood_lock


onstart:
    fsood_lock.hold("snakemake")


onsuccess:
    fsood_lock.release()


onerror:
    fsood_lock.release()


rule all:
    input:
        all_targets(),
    default_target: True
