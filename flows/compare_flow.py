"""``compare_flow``: methods × budgets × seeds × evaluation models on one source, plus full data.

Pruned and distilled sets are compared at matched budgets: every ipc k is also run as the pruning
fraction k·C/N, and every fraction f as ipc round(f·N/C), so each budget has a row per method with the
same number of images. Each cell is reduce → evaluate (one task per evaluation model) → record, as
Prefect tasks on the chosen task runner (threads, or Dask: see :mod:`tasks.runners`); ranking methods
are scored once per seed before the cells start. The MLflow parent run holds one nested child run per
cell; the table is printed, saved as CSV, logged to the parent run and published as a Prefect table
artifact, and the comparison report (HTML + Markdown) is rendered.
"""
from __future__ import annotations

import smallset.flows.settings  # noqa: F401
from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger

from smallset import tracking
from smallset.errors import SmallsetError
from smallset.tasks import results, steps
from smallset.tasks.prefect_tasks import cached_source, full_data_task, score_task, submit_cell
from smallset.tasks.runners import gpu_annotation


def plan_cells(methods, fractions, ipcs, seeds, base: dict, ds) -> list[steps.CellSpec]:
    budgets = [steps.Budget(fraction=f) for f in fractions] + [steps.Budget(ipc=k) for k in ipcs]
    if not budgets:
        raise SmallsetError("A compare needs at least one budget: give --fractions and/or --ipcs.")
    params = base.get("params") or {}
    common = {k: v for k, v in base.items() if k != "params"}
    cells = []
    for method in methods:
        kind = steps.method_kind(method)
        seen = set()
        for b in budgets:
            b = b.for_kind(kind, ds)
            key = b.ipc if kind == "distill" else b.fraction
            if key in seen:
                continue
            seen.add(key)
            for seed in seeds:
                cells.append(steps.CellSpec(method=method, budget=b, seed=seed, config=dict(params.get(method, {})),
                                            **common))
    return cells


@flow(name="compare", log_prints=True)
def compare_flow(
    source: str = "builtin:mnist-mini",
    methods: list[str] = ("random",),
    fractions: list[float] = (),
    ipcs: list[int] = (10,),
    seeds: list[int] = (0,),
    model: str = "convnet",
    model_kwargs: dict | None = None,
    eval_models: list[str] | None = None,
    protocol: str = "quick",
    eval_augment: str = "none",
    eval_epochs: int | None = None,
    eval_runs: int = 1,
    device: str = "auto",
    params: dict | None = None,
    output_dir: str = "smallset-out",
    include_full: bool = True,
    no_eval: bool = False,
    data_root: str | None = None,
    gpus: int = 0,
    report: bool = True,
    force: bool = False,
) -> list[dict]:
    methods, fractions, ipcs, seeds = list(methods), list(fractions), list(ipcs), list(seeds)
    for m in methods:
        steps.method_kind(m)
    base = dict(model=model, model_kwargs=model_kwargs or {}, eval_models=list(eval_models or []),
                protocol=protocol, eval_augment=eval_augment, eval_epochs=eval_epochs, eval_runs=eval_runs,
                device=device, no_eval=no_eval, force=force, params=params or {})
    src = cached_source(source, data_root)
    cells = plan_cells(methods, fractions, ipcs, seeds, base, src.train)
    for c in cells:
        steps.validate(c)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(output_dir) / f"compare-{stamp}"
    logger = get_run_logger()
    parent = tracking.start_parent(src.id, f"compare {stamp}", tags={"kind": "compare", "source": src.id})
    status = "FAILED"
    try:
        tracking.log_json(parent, {"source": source, "methods": methods, "fractions": fractions, "ipcs": ipcs,
                                   "seeds": seeds, **base}, "compare.json")
        with gpu_annotation(gpus):
            # Shared work first: each ranking method is scored once per seed, whatever the number of budgets.
            scored = {}
            for c in cells:
                if c.kind == "prune" and (c.method, c.seed) not in scored:
                    scored[(c.method, c.seed)] = score_task.submit(c, source, data_root)
            futures = []
            if include_full and not no_eval:
                ref = steps.CellSpec(method="random", budget=steps.Budget(1.0), seed=seeds[0],
                                     **{k: v for k, v in base.items() if k != "params"})
                futures.append(full_data_task.submit(ref, source, parent, data_root))
            for c in cells:
                out = steps.default_output(src.id, c, c.budget, out_dir)
                futures.append(submit_cell(c, source, str(out), parent, data_root, scored.get((c.method, c.seed))))
            rows = [f.result() for f in futures]
        print("\n" + results.format_table(rows))
        csv_path = results.write_csv(rows, out_dir / "results.csv")
        tracking.log_file(parent, csv_path)
        tracking.log_metrics(parent, {"cells": len(rows)})
        results.publish_table_artifact(rows, f"smallset compare on {source} ({stamp})")
        if report:
            from smallset.tasks.report_task import publish_report

            publish_report(parent, out_dir)
        logger.info("results: %s; MLflow parent run %s", csv_path, parent)
        status = "FINISHED"
    finally:
        tracking.end_run(parent, status)
    for r in rows:
        r["parent_run_id"] = parent
        r["csv"] = str(csv_path)
    return rows
