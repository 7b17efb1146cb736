"""prefect.yaml matches the flows: every entrypoint imports and every parameter exists on its flow."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RAW = yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_schema_validates():
    from prefect.cli.deploy._models import PrefectYamlModel  # private, prefect is pinned

    PrefectYamlModel.model_validate(RAW)


def test_one_deployment_is_nightly():
    crons = [s["cron"] for d in RAW["deployments"] for s in d.get("schedules", [])]
    assert "0 2 * * *" in crons


@pytest.mark.parametrize("dep", RAW["deployments"], ids=lambda d: d["name"])
def test_entrypoint_imports_and_parameters_exist(dep, monkeypatch):
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(dep["entrypoint"])
    flow.validate_parameters(dep.get("parameters", {}))
    for s in dep.get("schedules", []):
        CronSchedule(cron=s["cron"], timezone=s.get("timezone"))


def test_a_wrong_parameter_would_be_caught():
    from prefect.exceptions import ParameterTypeError, SignatureMismatchError
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(ROOT / "flows/prune_flow.py") + ":prune_flow")
    with pytest.raises((SignatureMismatchError, ParameterTypeError)):
        flow.validate_parameters({"fractionn": 0.1})


def test_a_wrong_run_option_would_be_caught():
    from prefect.exceptions import ParameterTypeError, SignatureMismatchError
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(ROOT / "flows/compare_flow.py") + ":compare_flow")
    flow.validate_parameters({"options": {"model": "mlp", "eval_runs": 2}})
    with pytest.raises((SignatureMismatchError, ParameterTypeError)):
        flow.validate_parameters({"options": {"modell": "mlp"}})
    with pytest.raises((SignatureMismatchError, ParameterTypeError)):
        flow.validate_parameters({"options": {"eval_runs": 0}})
