"""The grid's jobs as a graph: which jobs an edit reaches, and what is downstream of them.

What the tests and the docs use to say what an edit reruns (tests/test_edit_reruns.py, test_contract.py):
an edited params key or source file reaches the jobs whose contract (fsood.contract) declares it, and
through their outputs everything downstream. The tools themselves never call this: Snakemake and DVC
find the same jobs from the rules and dvc.yaml the contract writes.
"""
from __future__ import annotations

from fsood.contract import input_paths, job_name, jobs


def overlaps(template: str, key: str) -> bool:
    """Does a declared key (a template like ``benchmarks.{benchmark}.data``, or a concrete key) overlap an
    edited key: is one of them the other, or below it? ``{...}`` parts match any name."""
    t, k = template.split("."), key.split(".")
    return all(a == b or a.startswith("{") for a, b in zip(t, k))



def direct_dependents(params: dict, edited: str, kind: str = "param") -> set[str]:
    """Jobs (``stage@cell``) that declare ``edited`` themselves: a dotted params key (``kind='param'``)
    or a file relative to src/fsood (``kind='code'``). What reruns after the edit is these and,
    through their outputs, everything downstream of them."""
    hit = set()
    for s, cell in jobs(params):
        if kind == "param":
            found = any(overlaps(key, edited) for key in s.param_keys(**cell))
        else:
            found = s.runs(edited)
        if found:
            hit.add(job_name(s, **cell))
    return hit


def downstream(params: dict, names: set[str]) -> set[str]:
    """``names`` and every job that reads, directly or not, an output of one of them."""
    producers = {}
    for s, cell in jobs(params):
        for key in s.outputs:
            producers[s.template(key).format(**cell)] = job_name(s, **cell)
    closure, changed = set(names), True
    while changed:
        changed = False
        for s, cell in jobs(params):
            name = job_name(s, **cell)
            if name in closure:
                continue
            ins = [p for paths_ in input_paths(s, params, **cell).values() for p in paths_]
            if any(producers.get(p) in closure for p in ins):
                closure.add(name)
                changed = True
    return closure
