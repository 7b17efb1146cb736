"""Look at the report and at MLflow's run comparison in headless Chromium, as a user would.

Screenshots are kept in $SMALLSET_SCREENSHOTS when set (else in the test's temporary directory).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from smallset import tracking

import browser

pytestmark = [pytest.mark.browser, pytest.mark.server]  # the shared tiny compare runs through Prefect's test server


@pytest.fixture
def shots(tmp_path):
    d = Path(os.environ.get("SMALLSET_SCREENSHOTS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_report_page_shows_table_and_plots(tiny_compare, shots):
    html_path = Path(tiny_compare[0]["csv"]).with_name("report.html").resolve()
    page = browser.dom(html_path.as_uri())
    results = page[page.index('<table id="results">'):]
    assert results[:results.index("</table>")].count("<tr>") == 1 + len(tiny_compare)
    assert '<table id="summary">' in page and "Evaluation, the same for every reduced set: quick" in page
    assert page.count('src="data:image/png;base64,') >= 3
    png = browser.screenshot(html_path.as_uri(), str(shots / "report.png"))
    assert browser.png_is_not_blank(png)


def _wait_healthy(url: str, proc, timeout: float = 150) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with {proc.returncode}")
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).read().strip() == b"OK":
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError("mlflow ui did not become healthy")


@pytest.mark.multiprocess  # an `mlflow ui` server process
@pytest.mark.slow
def test_mlflow_ui_compares_the_runs_of_a_compare(tiny_compare, shots):
    client = MlflowClient(tracking.tracking_uri())
    parent = tiny_compare[0]["parent_run_id"]
    exp_id = client.get_run(parent).info.experiment_id
    run_ids = [r["run_id"] for r in tiny_compare]
    port = browser.free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen([mlflow_bin, "ui", "--backend-store-uri", tracking.tracking_uri(), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base, proc)
        # the API the UI reads lists every child run with its metrics
        req = urllib.request.Request(base + "/api/2.0/mlflow/runs/search", method="POST",
                                     data=json.dumps({"experiment_ids": [exp_id], "max_results": 100}).encode(),
                                     headers={"Content-Type": "application/json"})
        found = {r["info"]["run_id"] for r in json.load(urllib.request.urlopen(req, timeout=30))["runs"]}
        assert set(run_ids) <= found
        url = f"{base}/#/compare-runs?runs={json.dumps(run_ids)}&experiments={json.dumps([exp_id])}"
        png = browser.screenshot(url, str(shots / "mlflow-compare.png"), size="1400,1800", wait_ms=20000)
        assert browser.png_is_not_blank(png)
        page = browser.dom(url, wait_ms=20000)
        assert "test_accuracy" in page
        # the experiment opens on its runs ("Model training"), not on the GenAI traces overview
        exp = json.load(urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get?experiment_id={exp_id}",
                                               timeout=30))["experiment"]
        assert {t["key"]: t["value"] for t in exp.get("tags",
                                                      [])}["mlflow.experimentKind"] == "custom_model_development"
        runs_url = tracking.experiment_url(base, exp_id)
        png = browser.screenshot(runs_url, str(shots / "mlflow-experiment.png"), size="1400,1000", wait_ms=20000)
        assert browser.png_is_not_blank(png)
        page = browser.dom(runs_url, wait_ms=20000)
        # the runs table ("6 matching runs": the compare's parent and its children nested under it), not the
        # GenAI overview's traces dashboard
        text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
        assert f"{len(run_ids) + 1} matching runs" in text and "compare 20" in text, "no runs table on the page"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
