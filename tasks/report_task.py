"""Render the comparison report of a compare and publish it (MLflow artifacts + Prefect markdown)."""
from __future__ import annotations

from pathlib import Path

from smallset import report, tracking


def publish_report(parent_run_id: str, out_dir: str | Path) -> tuple[Path, Path]:
    html_path, md_path = report.render(parent_run_id, out_dir)
    tracking.log_file(parent_run_id, html_path, "report")
    tracking.log_file(parent_run_id, md_path, "report")
    for png in Path(md_path).parent.glob("*.png"):
        tracking.log_file(parent_run_id, png, "report")
    try:
        from prefect.artifacts import create_markdown_artifact

        text = Path(md_path).read_text()
        # Prefect shows markdown, not local images: keep the table, point at the HTML for the figures.
        table = "\n".join(line for line in text.splitlines() if not line.startswith("!["))
        create_markdown_artifact(key="smallset-report", markdown=table + f"\n\nFigures: {html_path.resolve()}\n",
                                 description="smallset comparison report")
    except Exception:  # outside a flow run (smallset report): MLflow has the report already
        pass
    return html_path, md_path
