"""The comparison report built from a compare's MLflow runs."""
import re

import pytest
from mlflow.tracking import MlflowClient

from smallset import report, tracking

pytestmark = pytest.mark.server  # the shared tiny compare runs through Prefect's test server


def test_compare_matrix_and_report(tiny_compare):
    rows = tiny_compare
    parent = rows[0]["parent_run_id"]
    # the cross-architecture matrix: every reduced set has an accuracy for each evaluation model
    for r in rows:
        assert 0 <= r["test_accuracy/mlp"] <= 1 and 0 <= r["test_accuracy/lenet"] <= 1
    html_path = next(iter({r["csv"] for r in rows})).replace("results.csv", "report.html")
    page = open(html_path).read()
    results = page[page.index('<table id="results">'):]
    assert results[:results.index("</table>")].count("<tr>") == 1 + len(rows)  # header + one row per run
    summary = page[page.index('<table id="summary">'):]
    assert summary[:summary.index("</table>")].count("<tr>") == 1 + 3  # full data + 2 budgets of random
    assert "accuracy % (mlp)" in page and "accuracy % (lenet)" in page
    figs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert {"accuracy_vs_images.png", "accuracy_vs_seconds.png", "per_class_counts.png"} <= set(figs)
    # logged as artifacts of the compare's parent run
    client = MlflowClient(tracking.tracking_uri())
    names = {f.path for f in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/report.md"} <= names
    # the Markdown summary has the same table
    md = open(html_path.replace(".html", ".md")).read()
    assert md.count("\n| random |") == 4 + 2 and "| full |" in md  # 4 runs + 2 summary rows


def test_collect_reads_the_rows_back(tiny_compare):
    rows, models = report.collect(tiny_compare[0]["parent_run_id"])
    assert models == ["mlp", "lenet"]
    assert [r["kind"] for r in rows].count("prune") == 4 and rows[0]["kind"] == "full"
    r = next(x for x in rows if x["kind"] == "prune")
    assert set(r["accuracy"]) == {"mlp", "lenet"}
    assert r["total_seconds"] == r["selection_seconds"] + r["train_seconds"]
