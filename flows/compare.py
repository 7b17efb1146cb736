"""``compare_flow``: methods × budgets × seeds on one source, plus the full-data reference.

Pruned and distilled sets are compared at matched budgets: every ipc k is also run as the pruning
fraction k·C/N, and every fraction f as ipc round(f·N/C), so each budget has a row per method with the
same number of images. The MLflow parent run holds one nested child run per cell; the table is printed,
saved as CSV and published as a Prefect table artifact.
"""
from __future__ import annotations

import flows.settings  # noqa: F401
from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from core import tracking
from core.errors import SmallsetError
from tasks import results, steps
from tasks.prefect_tasks import cell_task, full_data_task, load_source_task, score_task


def plan_cells(methods, fractions, ipcs, seeds, base: dict, ds) -> list[steps.CellSpec]:
    budgets = [steps.Budget(fraction=f) for f in fractions] + [steps.Budget(ipc=k) for k in ipcs]
    if not budgets:
        raise SmallsetError("A compare needs at least one budget: give --fractions and/or --ipcs.")
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
                cells.append(steps.CellSpec(method=method, budget=b, seed=seed,
                                            config=dict((base.get("params") or {}).get(method, {})),
                                            **{k: v for k, v in base.items() if k != "params"}))
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
    eval_model: str | None = None,
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
) -> list[dict]:
    methods, fractions, ipcs, seeds = list(methods), list(fractions), list(ipcs), list(seeds)
    for m in methods:
        steps.method_kind(m)
    base = dict(model=model, model_kwargs=model_kwargs or {}, eval_model=eval_model, protocol=protocol,
                eval_augment=eval_augment, eval_epochs=eval_epochs, eval_runs=eval_runs, device=device,
                no_eval=no_eval, params=params or {})
    src = load_source_task(source, data_root)
    cells = plan_cells(methods, fractions, ipcs, seeds, base, src.train)
    for c in cells:
        steps.validate(c)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(output_dir) / f"compare-{stamp}"
    logger = get_run_logger()
    with tracking.run(src.id, f"compare {stamp}", tags={"kind": "compare"}) as parent:
        tracking.log_json(parent, {"source": source, "methods": methods, "fractions": fractions, "ipcs": ipcs,
                                   "seeds": seeds, **{k: v for k, v in base.items()}}, "compare.json")
        # Shared work first: each ranking method is scored once per seed, whatever the number of budgets.
        score_futs = {}
        for c in cells:
            key = (c.method, c.seed)
            if c.kind == "prune" and key not in score_futs:
                score_futs[key] = score_task.submit(c, src.train)
        futures = []
        if include_full and not no_eval:
            futures.append(full_data_task.submit(src, steps.CellSpec(method="random", budget=steps.Budget(1.0),
                                                                      seed=seeds[0], **{k: v for k, v in base.items() if k != "params"}), parent))
        for c in cells:
            sc, secs = score_futs[(c.method, c.seed)].result() if (c.method, c.seed) in score_futs else (None, 0.0)
            out = steps.default_output(src.id, c, c.budget, out_dir)
            futures.append(cell_task.submit(c, src, parent, sc, secs, str(out)))
        rows = [f.result() for f in futures]
        table = results.format_table(rows)
        print("\n" + table)
        csv_path = results.write_csv(rows, out_dir / "results.csv")
        tracking.log_file(parent, csv_path)
        tracking.log_metrics(parent, {"cells": len(rows)})
        create_table_artifact(key="smallset-compare", table=results.table_artifact_rows(rows),
                              description=f"smallset compare on {source} ({stamp})")
        logger.info("results: %s; MLflow parent run %s", csv_path, parent)
    for r in rows:
        r["parent_run_id"] = parent
        r["csv"] = str(csv_path)
    return rows
