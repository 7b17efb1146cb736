"""GEDA: Gradient-norm Empirical Distribution Approximation (Cribeiro Ramallo, master's thesis, 2022).

Scores every example by its gradient norm at the initial model (last layer in closed form, or all
parameters), then, per class, keeps the subset whose gradient-norm ECDF best matches the class's on N
trapezoid nodes: an MILP, solved in its reduced per-cell form with PuLP/CBC, as the thesis's full
problem, or in closed form; which examples fill each cell is chosen systematically or at random.

Rationale and the paper's recipe: docs/methods/geda.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from smallset.config import option
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.method import Prepared
from smallset.prune._features import check_scores, class_positions, seeded_model, sgd_epochs
from smallset.prune._gradients import full_grad_norms, last_layer_grad_norms
from smallset.prune.base import Selection, Selector, check_fraction, class_budgets, register_selector


# --- the ECDF-matching problem (pure functions on 1-D tensors) ---------------------------------------------
def ecdf_nodes(g_sorted: torch.Tensor, num_nodes: int, placement: str = "uniform") -> torch.Tensor:
    """N nodes (float64) from min to max of the sorted values: equally spaced, or at the quantiles."""
    if num_nodes < 2:
        raise SmallsetError("nodes must be at least 2 (the trapezoid rule needs both ends).", option="nodes")
    g = g_sorted.double()
    lo, hi = g[0], g[-1]
    if placement == "uniform":
        t = lo + torch.arange(num_nodes, dtype=torch.float64) * ((hi - lo) / (num_nodes - 1))  # thesis: m + k(M−m)/N
    elif placement == "quantile":
        t = torch.quantile(g, torch.linspace(0.0, 1.0, num_nodes, dtype=torch.float64))
    else:
        raise SmallsetError(f"node_placement must be 'uniform' or 'quantile', not {placement!r}.")
    t[0], t[-1] = lo, hi
    return t


def trapezoid_weights(t: torch.Tensor) -> torch.Tensor:
    """w_1 = (t_2 − t_1)/2, w_k = (t_{k+1} − t_{k−1})/2, w_N = (t_N − t_{N−1})/2
    (docs/methods/geda.md#geda-milp)."""
    gaps = torch.diff(t.double())
    w = torch.zeros_like(t, dtype=torch.float64)
    w[:-1] += gaps / 2
    w[1:] += gaps / 2
    return w


def node_counts(g_sorted: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """n_k = #{g ≤ t_k} for every node (int64)."""
    return torch.searchsorted(g_sorted.double().contiguous(), t.double().contiguous(), right=True)


def closed_form_counts(nk: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Optimal picks per cell (docs/methods/geda.md#geda-reduction): A_k = ⌊m·n_k/n + ½⌋ (exact integer
    arithmetic), A_0 = 0, A_{N+1} = m, y_j = A_{j+1} − A_j for the N+1 cells."""
    a = torch.div(2 * m * nk.long() + n, 2 * n, rounding_mode="floor")
    a = torch.cat([torch.zeros(1, dtype=torch.long), a, torch.tensor([m])])
    return torch.diff(a)


def cell_sizes(nk: torch.Tensor, n: int) -> torch.Tensor:
    """s_j = n_{j+1} − n_j with n_0 = 0 and n_{N+1} = n (N+1 cells)."""
    return torch.diff(torch.cat([torch.zeros(1, dtype=torch.long), nk.long(), torch.tensor([n])]))


def trapezoid_objective(cum_picks: torch.Tensor, m: int, fk: torch.Tensor, w: torch.Tensor) -> float:
    """Σ_k w_k |A_k/m − F_k|: the GEDA objective for A_k selected examples at or below node k."""
    return float((w * (cum_picks.double() / m - fk.double()).abs()).sum())


def ecdf_l1(full: torch.Tensor, subset: torch.Tensor) -> float:
    """Exact ∫ |F_full(t) − F_subset(t)| dt of two empirical CDFs (1-D Wasserstein-1)."""
    a = torch.sort(full.double()).values
    b = torch.sort(subset.double()).values
    z = torch.sort(torch.cat([a, b])).values
    fa = torch.searchsorted(a, z, right=True).double() / len(a)
    fb = torch.searchsorted(b, z, right=True).double() / len(b)
    return float(((fa - fb).abs()[:-1] * torch.diff(z)).sum())


def _ecdf_l1_ranks(g_sorted: torch.Tensor, ranks: torch.Tensor) -> float:
    """:func:`ecdf_l1` of a set and its subset at sorted positions ``ranks``, in O(n) without searches.

    Between consecutive sorted values both ECDFs are constant; inside a run of ties the gap z_{r+1} − z_r
    is 0, so only the last position of each run (where the running counts are exact) contributes.
    """
    n, m = len(g_sorted), len(ranks)
    if n < 2 or m == 0:
        return 0.0
    picked = torch.zeros(n, dtype=torch.float64)
    picked[ranks] = 1.0
    f = torch.arange(1, n + 1, dtype=torch.float64) / n
    g = torch.cumsum(picked, 0) / m
    return float(((f - g).abs()[:-1] * torch.diff(g_sorted.double())).sum())


@dataclass
class _ClassProblem:
    """One class's ECDF-matching instance, in sorted order."""

    order: torch.Tensor  # positions (in the class) sorted by g, stable
    g_sorted: torch.Tensor  # float64
    t: torch.Tensor  # nodes
    w: torch.Tensor  # trapezoid weights
    nk: torch.Tensor  # n_k
    m: int

    @property
    def n(self) -> int:
        return len(self.order)

    @property
    def fk(self) -> torch.Tensor:
        return self.nk.double() / self.n


def _build_problem(g: torch.Tensor, m: int, nodes: int, placement: str) -> _ClassProblem:
    g_sorted, order = torch.sort(g.double(), stable=True)
    t = ecdf_nodes(g_sorted, nodes, placement)
    return _ClassProblem(order, g_sorted, t, trapezoid_weights(t), node_counts(g_sorted, t), m)


def _scale(p: _ClassProblem) -> float:
    """Divide the weights by the node span so the solver sees O(1) coefficients (same optimum)."""
    span = float(p.t[-1] - p.t[0])
    return span if span > 0 else 1.0


def solve_counts_milp(problems: list[_ClassProblem]) -> list[torch.Tensor]:
    """The reduced MILP (docs/methods/geda.md#geda-reduction) for every problem at once (PuLP + CBC);
    returns y per problem.

    Constraints are multiplied by m (deviations counted in examples, e_k ≥ |A_k − m·F_k|), which has the
    same optimum and keeps the coefficients integral apart from m·F_k.
    """
    import pulp

    prob = pulp.LpProblem("geda_reduced", pulp.LpMinimize)
    ys, objective = [], []
    for c, p in enumerate(problems):
        s = cell_sizes(p.nk, p.n).tolist()
        y = [pulp.LpVariable(f"y_{c}_{j}", lowBound=0, upBound=s[j], cat="Integer") for j in range(len(s))]
        prob += pulp.lpSum(y) == p.m
        scale = _scale(p) * p.m
        for k in range(len(p.t)):
            e = pulp.LpVariable(f"e_{c}_{k}", lowBound=0)
            target = p.m * float(p.fk[k])
            prob += e >= pulp.lpSum(y[:k + 1]) - target
            prob += e >= target - pulp.lpSum(y[:k + 1])
            objective.append(float(p.w[k]) / scale * e)
        ys.append(y)
    prob += pulp.lpSum(objective)
    _solve(prob)
    return [torch.tensor([int(round(v.varValue or 0.0)) for v in y], dtype=torch.long) for y in ys]


def solve_full_milp(problems: list[_ClassProblem]) -> list[torch.Tensor]:
    """The thesis's problem (P): one binary per example (in sorted order); returns the chosen ranks."""
    import pulp

    prob = pulp.LpProblem("geda_full", pulp.LpMinimize)
    xs, objective = [], []
    for c, p in enumerate(problems):
        x = [pulp.LpVariable(f"x_{c}_{i}", cat="Binary") for i in range(p.n)]
        prob += pulp.lpSum(x) == p.m
        scale = _scale(p) * p.m
        for k in range(len(p.t)):
            e = pulp.LpVariable(f"e_{c}_{k}", lowBound=0)
            target = p.m * float(p.fk[k])
            below = pulp.lpSum(x[: int(p.nk[k])])  # c_ik = 1 exactly for the ranks below n_k
            prob += e >= below - target
            prob += e >= target - below
            objective.append(float(p.w[k]) / scale * e)
        xs.append(x)
    prob += pulp.lpSum(objective)
    _solve(prob)
    return [torch.tensor([i for i, v in enumerate(x) if (v.varValue or 0.0) > 0.5], dtype=torch.long) for x in xs]


def _solve(prob) -> None:
    import pulp

    status = prob.solve(pulp.PULP_CBC_CMD(msg=False))
    if pulp.LpStatus.get(status) != "Optimal":
        raise SmallsetError(f"CBC did not solve the GEDA MILP (status {pulp.LpStatus.get(status, status)}); "
                            f"use --milp closed_form, which needs no solver.")


def fill_cells(p: _ClassProblem, y: torch.Tensor, fill: str, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """Sorted ranks picked inside every cell, and the cell of each pick."""
    s = cell_sizes(p.nk, p.n)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(s, 0)[:-1]])
    ranks, cells = [], []
    for j in range(len(s)):
        k, size = int(y[j]), int(s[j])
        if k == 0:
            continue
        if fill == "systematic":
            pos = torch.div((2 * torch.arange(k) + 1) * size, 2 * k, rounding_mode="floor")
        elif fill == "random":
            pos = torch.randperm(size, generator=generator)[:k]
        else:
            raise SmallsetError(f"fill must be 'systematic' or 'random', not {fill!r}.")
        ranks.append(starts[j] + pos)
        cells.append(torch.full((k,), j, dtype=torch.long))
    if not ranks:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(ranks), torch.cat(cells)


# --- the selector -----------------------------------------------------------------------------------------
@dataclass
class GEDAConfig:
    warmup_epochs: int = option(0, "SGD epochs on the full data before measuring gradient norms (0: the model at "
                                   "initialisation)", prepare=True, ge=0)
    gradient: Literal["last_layer", "full"] = option(
        "last_layer", "last_layer: closed-form norm of the classifier's gradient; full: all parameters (vmap)",
        prepare=True)
    lr: float = option(0.01, "SGD learning rate of the warm-up epochs", prepare=True, gt=0)
    batch_size: int = option(128, "mini-batch size of the warm-up epochs", prepare=True, ge=1)
    nodes: int = option(5, "trapezoid-rule nodes N on the gradient-norm axis (thesis: 5; both ends needed)", ge=2)
    node_placement: Literal["uniform", "quantile"] = option(
        "uniform", "nodes equally spaced on [min, max] of the class's norms, or at their quantiles")
    milp: Literal["reduced", "full", "closed_form"] = option(
        "reduced", "reduced: per-cell counts (CBC); full: one binary per example (CBC, small data); closed_form")
    fill: Literal["systematic", "random"] = option(
        "systematic", "which examples inside a cell: evenly spaced ranks of the norm, or a seeded random draw")
    weighting: Literal["none", "cell"] = option(
        "none", "none: weights 1 (thesis); cell: (cell share in class)/(cell share in subset)")
    full_milp_max: int = option(2000, "largest dataset (examples) for which milp=full is attempted", ge=0)


@register_selector("geda")
class GEDASelector(Selector):
    """Match each class's gradient-norm ECDF with a MILP (GEDA thesis ch. 4; docs/methods/geda.md)."""

    config_cls = GEDAConfig
    # GEDA keeps neither end of the ranking: it matches the distribution of the scores.
    higher_is_keep = None
    uses_model = True

    def prepare(self, ds: ImageDataset, ctx: RunContext) -> Prepared:
        """Per-example gradient norms at θ₀ (float32, CPU)."""
        c = self.config
        if c.warmup_epochs < 0:
            raise SmallsetError("warmup_epochs must be 0 or more.")
        if c.gradient not in ("last_layer", "full"):
            raise SmallsetError(f"gradient must be 'last_layer' or 'full', not {c.gradient!r}.")
        model = seeded_model(ds, ctx)
        x = ds.normalized().to(ctx.device)
        y = ds.labels.to(ctx.device)
        if c.warmup_epochs > 0:
            sgd_epochs(model, x, y, c.warmup_epochs, ctx.generator(1), lr=c.lr, batch_size=c.batch_size)
        if c.gradient == "last_layer":
            g = last_layer_grad_norms(model, x, y)
        else:
            g = full_grad_norms(model, x, y)
        return Prepared(g.float().cpu())

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared=None) -> Selection:
        fraction = check_fraction(fraction)
        c = self.config
        if c.milp not in ("reduced", "full", "closed_form"):
            raise SmallsetError(f"milp must be 'reduced', 'full' or 'closed_form', not {c.milp!r}.")
        if c.weighting not in ("none", "cell"):
            raise SmallsetError(f"weighting must be 'none' or 'cell', not {c.weighting!r}.")
        if c.fill not in ("systematic", "random"):
            raise SmallsetError(f"fill must be 'systematic' or 'random', not {c.fill!r}.")
        if c.milp == "full" and len(ds) > c.full_milp_max:
            raise SmallsetError(
                f"milp='full' needs one binary variable per example and {len(ds)} examples exceed "
                f"full_milp_max={c.full_milp_max}; use milp='reduced', which has the same optimum."
            )
        scores = check_scores(ds, self.prepared_value(ds, ctx, prepared)).cpu()
        t0 = time.perf_counter()
        budgets = class_budgets(ds.class_counts(), fraction)
        classes = [(idx, m) for idx, m in zip(class_positions(ds), budgets) if m > 0]
        problems = [_build_problem(scores[idx], m, c.nodes, c.node_placement) for idx, m in classes]
        if c.milp == "closed_form":
            counts = [closed_form_counts(p.nk, p.n, p.m) for p in problems]
        elif c.milp == "reduced":
            counts = solve_counts_milp(problems) if problems else []
        else:
            picked = solve_full_milp(problems) if problems else []
        solve_seconds = time.perf_counter() - t0

        gen = ctx.generator(29)
        keep, weights, objectives, w1 = [], [], [], []
        for i, ((idx, m), p) in enumerate(zip(classes, problems)):
            s = cell_sizes(p.nk, p.n)
            if c.milp == "full":
                ranks = picked[i]
                cells = torch.searchsorted(torch.cumsum(s, 0), ranks, right=True)
                y = torch.bincount(cells, minlength=len(s))
            else:
                y = counts[i]
                ranks, cells = fill_cells(p, y, c.fill, gen)
            if int(y.sum()) != m or bool((y > s).any()) or bool((y < 0).any()):
                raise SmallsetError("The GEDA solver returned an infeasible allocation; use milp=closed_form.",
                                    option="milp")
            keep.append(idx[p.order[ranks]])
            if c.weighting == "cell":
                w_cell = (s.double() / p.n) / (y.double().clamp_min(1) / m)
                weights.append(w_cell[cells].float())
            else:
                weights.append(torch.ones(len(ranks)))
            objectives.append(trapezoid_objective(torch.cumsum(y, 0)[:-1], m, p.fk, p.w))
            w1.append(_ecdf_l1_ranks(p.g_sorted, ranks))
        if keep:
            indices = torch.cat(keep)
            order = torch.argsort(indices)
            indices, wts = indices[order], torch.cat(weights)[order]
        else:
            indices, wts = torch.empty(0, dtype=torch.long), torch.empty(0)
        info = {
            "ecdf_objective": float(sum(objectives) / len(objectives)) if objectives else 0.0,
            "ecdf_l1": float(sum(w1) / len(w1)) if w1 else 0.0,
            "solve_seconds": solve_seconds,
            "gradient_norm_mean": float(scores.double().mean()) if len(scores) else 0.0,
        }
        return Selection(indices, wts, scores=scores.float(), info=info)
