"""``compare_flow``: methods × budgets × seeds × evaluation models on one source, plus full data.

Pruned and distilled sets are compared at matched budgets: every ipc k is also run as the pruning
fraction k·C/N, and every fraction f as ipc round(f·N/C), so each budget has a row per method with the
same number of images. Each cell is reduce → evaluate (one task per evaluation model) → record, as
Prefect tasks on the chosen task runner (threads, or Dask: see :mod:`smallset.tasks.runners`); a
method's preparation (scores, features) runs once per cache key before the cells start. The MLflow parent run
holds one nested child run per cell; the table is printed, saved as CSV, logged to the parent run and published
as a Prefect table artifact, and the comparison report (HTML + Markdown) is rendered.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger

import smallset.flows.settings  # noqa: F401
from smallset import tracking
from smallset.options import RunOptions
from smallset.tasks import record, results, spec, steps
from smallset.tasks.prefect_tasks import cached_source, full_data_task, prepare_task, submit_cell
from smallset.tasks.runners import gpu_annotation


@flow(name="compare", log_prints=True)
def compare_flow(
    methods: list[str] = ("random",),
    fractions: list[float] = (),
    ipcs: list[int] = (10,),
    seeds: list[int] = (0,),
    params: dict[str, dict] | None = None,
    output_dir: str = "smallset-out",
    include_full: bool = True,
    gpus: int = 0,
    report: bool = True,
    options: RunOptions = RunOptions(eval_runs=1),
) -> list[dict]:
    """Every method × budget × seed on ``options.source``; ``params`` maps a method to its options."""
    methods, fractions, ipcs, seeds = list(methods), list(fractions), list(ipcs), list(seeds)
    source = options.source
    src = cached_source(source, options.data_root, options.normalization)
    budgets = [spec.Budget(fraction=f) for f in fractions] + [spec.Budget(ipc=k) for k in ipcs]
    cells = spec.plan_cells(methods, budgets, seeds, options, dict(params or {}), len(src.train),
                            src.train.num_classes)
    for c in cells:  # a fraction too small for the data, an ipc above a class: refused before any work
        spec.check_budget_fits(c, src.train)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(output_dir) / f"compare-{stamp}"
    logger = get_run_logger()
    parent = tracking.start_parent(src.id, f"compare {stamp}", tags={
        "kind": "compare", "source": src.id, "eval_recipe": options.eval_recipe,
        "shared_recipe": steps.recipe_for(cells[0], src.train).describe() if cells else ""})
    status = "FAILED"
    try:
        tracking.log_json(parent, {"methods": methods, "fractions": fractions, "ipcs": ipcs, "seeds": seeds,
                                   "params": params or {}, "options": options.model_dump()}, "compare.json")
        with gpu_annotation(gpus):
            # Shared work first: each method's preparation runs once per key, whatever the number of budgets.
            prepared, keys = {}, [_prepare_key(c, src.train) for c in cells]
            for c, key in zip(cells, keys):
                if key is not None and key not in prepared:
                    prepared[key] = prepare_task.submit(c)
            futures = []
            if include_full and not options.no_eval:
                ref = spec.resolve_cell("random", spec.Budget(fraction=1.0),
                                        options.model_copy(update={"seed": seeds[0]}))
                futures.append(full_data_task.submit(ref, parent))
            for c, key in zip(cells, keys):
                out = spec.default_output(src.id, c, out_dir)
                futures.append(submit_cell(c, str(out), parent, prepared.get(key)))
            rows = [f.result() for f in futures]
        record.log_gains(rows)
        summary = results.summarize(rows)
        print("\n" + results.format_table(rows) + "\n\n" + results.format_summary(summary))
        csv_path = results.write_csv(rows, out_dir / "results.csv")
        tracking.log_file(parent, csv_path)
        tracking.log_file(parent, results.write_csv(summary, out_dir / "summary.csv"))
        tracking.log_metrics(parent, {"cells": len(rows)})
        results.publish_table_artifact(rows, f"smallset compare on {source} ({stamp})")
        if report:
            from smallset.tasks.report_task import publish_report

            publish_report(parent, out_dir)
        logger.info("results: %s; MLflow parent run %s", csv_path, parent)
        status = "FINISHED"
    except KeyboardInterrupt:  # SIGINT/SIGTERM: the compare was stopped, not broken
        status = "KILLED"
        raise
    finally:
        tracking.end_run(parent, status)
    for r in rows:
        r["parent_run_id"] = parent
        r["csv"] = str(csv_path)
    return rows


def _prepare_key(cell: spec.Cell, ds) -> str | None:
    import json

    return json.dumps(steps.prepare_key(cell, ds), sort_keys=True, default=str) if steps.needs_prepare(cell) else None
