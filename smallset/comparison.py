"""The comparison policy, written once: the run each result is judged against (its baseline), the gain over
it with its standard error, when a spread is shown, and how a budget is labelled.

Plain Python over result rows (the dicts ``tasks.record`` builds), so the printed summary, the MLflow metric
``gain_over_random`` and the report apply the same rules:

- a set retrained with the evaluation recipe (hard labels) is judged against ``RETRAINED_BASELINE``: random
  subsets of the same number of images, on the same seeds, retrained with the same recipe;
- a training-time method (its row has ``method_test_accuracy``, the accuracy of the model it trained itself)
  is judged by that accuracy against ``TRAINING_BASELINE``: random subsets trained on the same budget and the
  same schedule (``method_schedule``), on the same seeds; never across schedules;
- the baselines themselves and the reference kinds (full data) get no gain, nor does a row whose baseline did
  not run.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from smallset.budget import FRACTION, IPC, BudgetUnit

RETRAINED_BASELINE = "random"  # the baseline of a set retrained with the evaluation recipe
TRAINING_BASELINE = "random_steps"  # the baseline of a training-time method
BASELINES = frozenset({RETRAINED_BASELINE, TRAINING_BASELINE})
REFERENCE_KINDS = frozenset({"full"})  # what every reduced set is compared to: judged against nothing
GAIN_METRIC = "gain_over_random"  # a cell's gain, as its MLflow run's metric
MIN_RUNS_FOR_SPREAD = 3  # a ± (and a standard error) only over at least this many runs

# A recorded row's budget unit by its kind (rows read back from MLflow name their kind, not their class);
# every other kind (full data among them) counts a fraction of the source.
KIND_UNITS: dict[str, BudgetUnit] = {"distill": IPC}


def budget_label(kind: str, params: Mapping) -> str:
    """``ipc=10`` or ``fraction=0.1``: the budget in ``kind``'s unit, read from ``params`` (numbers or the
    strings MLflow gives back), labelled by the unit itself (:meth:`smallset.budget.BudgetUnit.label`)."""
    unit = KIND_UNITS.get(kind, FRACTION)
    return unit.label(params.get(unit.name))


def has_spread(runs: int | None) -> bool:
    """Whether ``runs`` runs are enough to show a ± (one or two runs show none)."""
    return (runs or 0) >= MIN_RUNS_FOR_SPREAD


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """The mean and sample standard deviation (None for no values; no std under two)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def _evaluation_accuracies(row: dict) -> list[float]:
    return row.get("test_accuracies") or ([row["test_accuracy"]] if row.get("test_accuracy") is not None else [])


def _own_accuracy(row: dict) -> list[float]:
    return [row["method_test_accuracy"]] if row.get("method_test_accuracy") is not None else []


@dataclass(frozen=True)
class Role:
    """How one sort of result is judged: against which method, matched on what, by which accuracy."""

    baseline: str  # the baseline method's name
    judged_by: str  # what the accuracy is the accuracy of (the summary's "accuracy of" column)
    matched_on: Callable[[dict], tuple]  # a row and its baseline rows give equal keys
    cell_accuracy: Callable[[dict], float | None]  # one cell's accuracy (the mean over its evaluation runs)
    run_accuracies: Callable[[dict], list[float]]  # every run's accuracy, pooled in a group


RETRAINED = Role(RETRAINED_BASELINE, "the evaluation recipe", lambda r: ("images", r["n_examples"]),
                 lambda r: r.get("test_accuracy"), _evaluation_accuracies)
TRAINING = Role(TRAINING_BASELINE, "its own training", lambda r: ("schedule", r["budget"], r.get("method_schedule")),
                lambda r: r.get("method_test_accuracy"), _own_accuracy)


def role_of(row: dict) -> Role:
    """TRAINING for a training-time method (judged by the model it trained), else RETRAINED."""
    return TRAINING if row.get("method_test_accuracy") is not None else RETRAINED


def accuracies(row: dict) -> list[float]:
    """A training-time method's own model accuracy, else every evaluation run's accuracy."""
    return role_of(row).run_accuracies(row)


def is_judged(row: dict) -> bool:
    """Whether a row gets a gain at all: not a baseline itself, not a reference (full data)."""
    return row["method"] not in BASELINES and row["kind"] not in REFERENCE_KINDS


def baseline_rows(row: dict, rows: list[dict], seeds: set | None = None) -> list[dict]:
    """The rows ``row`` is judged against: its role's baseline method, matched on the same images (or the same
    budget and schedule), on ``seeds`` (by default the row's own seed); none when the row is not judged."""
    if not is_judged(row):
        return []
    role, seeds = role_of(row), seeds if seeds is not None else {row["seed"]}
    key = role.matched_on(row)
    return [b for b in rows if b["method"] == role.baseline and b["seed"] in seeds and role.matched_on(b) == key]


def gain_and_se(values: list[float], baseline: list[float]) -> tuple[float | None, float | None]:
    """The difference of means and its standard error sqrt(s1²/n1 + s2²/n2), the latter only when both sides
    have a spread (at least MIN_RUNS_FOR_SPREAD values)."""
    mean, std = mean_std(values)
    b_mean, b_std = mean_std(baseline)
    if mean is None or b_mean is None:
        return None, None
    if not (has_spread(len(values)) and has_spread(len(baseline))):
        return mean - b_mean, None
    return mean - b_mean, (std ** 2 / len(values) + b_std ** 2 / len(baseline)) ** 0.5


@dataclass
class Group:
    """One method × kind × budget (× images, or × schedule for a training-time method) over every seed."""

    method: str
    kind: str
    budget: str
    role: Role
    members: list[dict]
    accuracies: list[float]  # every run's accuracy, pooled over seeds
    mean: float | None
    spread: float | None  # the sample std, only from MIN_RUNS_FOR_SPREAD runs
    gain: float | None
    gain_se: float | None

    @property
    def seeds(self) -> set:
        return {r["seed"] for r in self.members}


def groups(rows: list[dict]) -> list[Group]:
    """Rows pooled per method, kind, budget and what they are matched on (rows of several schedules stay
    apart), each with its gain over its baseline on the same seeds and the gain's standard error."""
    members_of: dict[tuple, list[dict]] = {}
    for r in rows:
        members_of.setdefault((r["method"], r["kind"], r["budget"], role_of(r).matched_on(r)), []).append(r)
    out = []
    for (method, kind, budget, _), members in members_of.items():
        role = role_of(members[0])
        accs = [a for r in members for a in role.run_accuracies(r)]
        mean, std = mean_std(accs)
        base = [a for b in baseline_rows(members[0], rows, {r["seed"] for r in members})
                for a in role.run_accuracies(b)]
        gain, gain_se = gain_and_se(accs, base)
        out.append(Group(method, kind, budget, role, members, accs, mean, std if has_spread(len(accs)) else None,
                         gain, gain_se))
    return out


def cell_gains(rows: list[dict]) -> list[tuple[dict, float]]:
    """(row, gain) for every cell judged whose baseline ran on its seed: its accuracy minus the baseline's (the
    mean of the baseline cells when there are several)."""
    out = []
    for r in rows:
        role = role_of(r)
        base = [a for b in baseline_rows(r, rows) if (a := role.cell_accuracy(b)) is not None]
        own = role.cell_accuracy(r)
        if own is not None and base:
            out.append((r, own - sum(base) / len(base)))
    return out
