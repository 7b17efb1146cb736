"""CCS, coverage-centric coreset selection (Zheng, Liu, Lai, Prakash, ICLR 2023).

Takes a difficulty score from another registered ranking selector (``score``: forgetting, el2n, grand, …),
drops the hardest β fraction (the hard cutoff), splits the remaining score range into ``strata`` equal-width
bins and fills the budget by visiting the bins from the least to the most populated, giving each an equal
share of what is left (the authors' allocation), sampling uniformly inside each bin. Per class by default.
β comes from the paper's CIFAR-10 table for the pruning rate, a number, or a search on a validation split
carved from the training set; by default (``auto``) the table on CIFAR-10 and the search elsewhere.

Rationale and the paper's recipe: docs/methods/ccs.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from smallset.config import option
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.method import Prepared
from smallset.prune._features import check_scores, class_positions, ranked_keep
from smallset.prune.base import SELECTORS, Selection, Selector, check_fraction, class_budgets, register_selector

# Recalled from the paper's appendix table for CIFAR-10 (pruning rate: β); only 90 % → 0.3 is verified
# against the authors' README (docs/methods/ccs.md#ccs-beta).
CIFAR10_BETA_TABLE = "0.3:0,0.5:0,0.7:0.1,0.8:0.1,0.9:0.3"
TABLE_DATASET = "cifar10"  # the known dataset (smallset.known_datasets) the default table was tuned on
BETA_RULES = ("auto", "table", "search")


@dataclass
class CCSConfig:
    score: str = option("forgetting", "difficulty score: the name of a registered ranking selector (forgetting, "
                                      "el2n, grand, ...; the paper's main results use AUM, not implemented)",
                        prepare=True)
    score_options: dict = option(default_factory=dict, prepare=True,
                                 help="options of the score's selector, as JSON, e.g. {\"models\": 2}")
    beta: str = option("auto", "hard-cutoff rate: a number in [0, 1), 'table' (beta_table at the pruning rate "
                               "1 - fraction), 'search' (best of search_grid on a validation split) or 'auto' "
                               "(table on CIFAR-10, the data it was tuned on; search on any other data)")
    beta_table: str = option(CIFAR10_BETA_TABLE, "pruning rate:beta pairs; beta of the largest listed rate not "
                                                 "above 1 - fraction, 0 below them (paper's CIFAR-10 row)")
    strata: int = option(50, "equal-width score strata k (paper: 50)", ge=1)
    balance: bool = option(True, "per class: cutoff, strata and round(fraction*n_c) budget in each class; off: "
                                 "over the whole set (the authors' code)")
    search_grid: str = option("0,0.1,0.3", "beta values tried by beta=search (the grid measured on MNIST)")
    val_fraction: float = option(0.1, "share of each class held out from the training set to score beta=search "
                                      "candidates (never the test split)", gt=0, lt=1)
    search_protocol: str = option("demo", "evaluation protocol (smallset.train) that trains each beta=search "
                                          "candidate on its coreset")


# --- the algorithm (docs/methods/ccs.md#ccs-algorithm) ----------------------------------------------------
def stratum_ids(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The equal-width stratum (0 … k−1) of every score: width (max − min)/k, the last bin closed so that the
    maximum falls in it; every score in bin 0 when max = min."""
    s = scores.double()
    if len(s) == 0:
        return torch.empty(0, dtype=torch.long)
    lo, hi = float(s.min()), float(s.max())
    if hi == lo:
        return torch.zeros(len(s), dtype=torch.long)
    return torch.floor((s - lo) / (hi - lo) * k).long().clamp(0, k - 1)


def allocate_budget(m: int, sizes: list[int]) -> list[int]:
    """The authors' allocation: visit strata from the smallest to the largest (ties: lower index first); each
    takes min(size, ⌊remaining / strata left⌋). Small strata are taken whole; their unused share goes to the
    larger ones. The total is m whenever Σ sizes ≥ m."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    budgets = [0] * len(sizes)
    remaining = int(m)
    for pos, i in enumerate(order):
        take = min(sizes[i], remaining // (len(order) - pos))
        budgets[i] = take
        remaining -= take
    return budgets


def ccs_sample(scores: torch.Tensor, m: int, beta: float, k: int, generator: torch.Generator
               ) -> tuple[torch.Tensor, int, int]:
    """Positions of the CCS coreset of size m in one group of difficulty ``scores`` (high = hard), the number
    of examples cut and the number of non-empty strata after the cut. The cutoff removes the ⌊β·n⌋ hardest
    (seeded tie-breaking), never so many that fewer than m remain."""
    n = len(scores)
    m = max(0, min(int(m), n))
    cut = min(int(math.floor(beta * n + 1e-9)), n - m)
    order = ranked_keep(scores, n, True, generator)  # hardest first, ties in a seeded random order
    rest = torch.sort(order[cut:]).values
    if m == 0 or len(rest) == 0:
        return torch.empty(0, dtype=torch.long), cut, 0
    ids = stratum_ids(scores[rest], k)
    sizes = torch.bincount(ids, minlength=k).tolist()
    budgets = allocate_budget(m, sizes)
    picked = []
    for b in range(k):
        if budgets[b]:
            members = rest[ids == b]
            picked.append(members[torch.randperm(len(members), generator=generator)[:budgets[b]]])
    return torch.sort(torch.cat(picked)).values, cut, sum(1 for z in sizes if z)


# --- options ----------------------------------------------------------------------------------------------
def scorer_names() -> list[str]:
    """Registered selectors with a ranking (``higher_is_keep`` set), CCS excluded."""
    return [n for n in SELECTORS.names() if SELECTORS.get(n).higher_is_keep is not None and n != "ccs"]


def parse_beta(value: Any) -> float | str:
    text = str(value).strip().lower()
    if text in BETA_RULES:
        return text
    try:
        beta = float(text)
    except ValueError:
        beta = float("nan")
    if not (0.0 <= beta < 1.0):
        raise SmallsetError(f"beta must be a number in [0, 1), 'auto', 'table' or 'search'; got {value!r}.",
                            option="beta")
    return beta


def parse_rates(text: str, option_name: str, pairs: bool) -> list:
    """``"0.7:0.1,0.9:0.3"`` → [(0.7, 0.1), (0.9, 0.3)] (pairs) or ``"0,0.1"`` → [0.0, 0.1]; every β in [0, 1)."""
    out = []
    try:
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            if pairs:
                rate, beta = (float(v) for v in part.split(":"))
                if not (0.0 <= rate <= 1.0):
                    raise ValueError
                out.append((rate, beta))
            else:
                out.append(float(part))
    except ValueError:
        form = "rate:beta pairs like 0.7:0.1,0.9:0.3" if pairs else "comma-separated numbers like 0,0.1,0.2"
        raise SmallsetError(f"{option_name} must be {form}; got {text!r}.", option=option_name) from None
    betas = [b for _, b in out] if pairs else out
    if not out or any(not (0.0 <= b < 1.0) for b in betas):
        raise SmallsetError(f"{option_name} needs at least one beta, each in [0, 1); got {text!r}.",
                            option=option_name)
    return sorted(out)


def table_beta(table: list[tuple[float, float]], fraction: float) -> float:
    """β of the largest tabulated pruning rate not above 1 − fraction (0 below every rate)."""
    alpha = round(1.0 - fraction, 9)
    beta = 0.0
    for rate, b in table:
        if rate <= alpha:
            beta = b
    return beta


def beta_rule(beta: Any, dataset_key: str | None) -> float | str:
    """The β rule a run uses: ``auto`` becomes ``table`` on the table's dataset (CIFAR-10 or a subset of it)
    and ``search`` on any other data; a number or an explicit rule stays as it is."""
    rule = parse_beta(beta)
    if rule == "auto":
        return "table" if dataset_key == TABLE_DATASET else "search"
    return rule


def check_ccs_config(c: CCSConfig) -> None:
    """What the field declarations cannot say: the score is a ranking selector whose options hold, and the
    β rule, table, grid and search protocol parse."""
    names = scorer_names()
    if c.score not in names:
        raise SmallsetError(f"score must be one of {', '.join(names)} (a selector with ranking scores); "
                            f"got {c.score!r}.", option="score")
    if not isinstance(c.score_options, dict):
        raise SmallsetError(f"score_options must be a JSON object like {{\"models\": 2}}; got {c.score_options!r}.",
                            option="score_options")
    try:
        SELECTORS.get(c.score).make_config(dict(c.score_options))
    except SmallsetError as e:
        raise SmallsetError(f"score_options for {c.score}: {e}", option="score_options") from None
    parse_beta(c.beta)
    parse_rates(c.beta_table, "beta_table", pairs=True)
    parse_rates(c.search_grid, "search_grid", pairs=False)
    from smallset.train import PROTOCOLS

    if c.search_protocol not in PROTOCOLS:
        raise SmallsetError(f"search_protocol must be one of {', '.join(PROTOCOLS.names())}; got "
                            f"{c.search_protocol!r}.", option="search_protocol")


@register_selector("ccs")
class CCSSelector(Selector):
    """Coverage-centric coreset selection on another selector's difficulty scores (Zheng et al., 2023)."""

    config_cls = CCSConfig
    higher_is_keep = None  # CCS samples across the score range; it is no score for another CCS
    uses_model = True
    demo = {"score": "forgetting", "score_options": {"score_epochs": 3}}
    smoke = {"score": "forgetting", "score_options": {"score_epochs": 2, "batch_size": 8}, "strata": 4}

    @classmethod
    def check_config(cls, config: CCSConfig) -> None:
        """The declared ranges, then the score name and options, β and the search settings, checked as a whole
        before any run."""
        super().check_config(config)
        check_ccs_config(config)

    def scorer(self) -> Selector:
        cls = SELECTORS.get(self.config.score)
        return cls(cls.make_config(dict(self.config.score_options)))

    def prepare(self, ds: ImageDataset, ctx: RunContext) -> Prepared:
        """The scorer's prepared scores (float32, one per example) and what its preparation measured."""
        self.check_config(self.config)
        scorer = self.scorer().prepare(ds, ctx)
        return Prepared(check_scores(ds, torch.as_tensor(scorer.value)).float().cpu(), dict(scorer.info),
                        scorer.units)

    def difficulty(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores oriented so that high = hard (= what the scorer itself would keep first)."""
        return scores if SELECTORS.get(self.config.score).higher_is_keep else -scores

    def coreset(self, ds: ImageDataset, difficulty: torch.Tensor, fraction: float, beta: float,
                generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Sorted indices of the CCS coreset at ``beta`` and what it did."""
        k = self.config.strata
        keep, cut, nonempty = [], 0, 0
        if self.config.balance:
            groups = list(zip(class_positions(ds), class_budgets(ds.class_counts(), fraction)))
        else:
            groups = [(torch.arange(len(ds)), int(math.floor(fraction * len(ds) + 0.5)))]
        for idx, m in groups:
            pos, c, filled = ccs_sample(difficulty[idx], m, beta, k, generator)
            keep.append(idx[pos])
            cut += c
            nonempty += filled
        indices = torch.sort(torch.cat(keep)).values if keep else torch.empty(0, dtype=torch.long)
        return indices, {"cut": float(cut), "cut_fraction": cut / max(1, len(ds)),
                         "nonempty_strata": nonempty / len(groups)}

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared=None) -> Selection:
        fraction = check_fraction(fraction)
        self.check_config(self.config)
        scores = self.prepared_value(ds, ctx, prepared)
        scores = check_scores(ds, torch.as_tensor(scores)).float().cpu()
        difficulty = self.difficulty(scores)
        mode = beta_rule(self.config.beta, ds.dataset_key)
        info: dict = {"beta_rule": mode if isinstance(mode, str) else "fixed"}
        if mode == "table":
            beta = table_beta(parse_rates(self.config.beta_table, "beta_table", True), fraction)
        elif mode == "search":
            beta, tried = self.search_beta(ds, difficulty, fraction, ctx)
            info["search_val_accuracy"] = [tried[b] for b in sorted(tried)]
            info["search_betas"] = sorted(tried)
        else:
            beta = float(mode)
        indices, stats = self.coreset(ds, difficulty, fraction, beta, ctx.generator(23))
        kept = scores[indices]
        info.update({"beta": beta, **stats,
                     "kept_mean_score": float(kept.mean()) if len(kept) else 0.0,
                     "mean_score": float(scores.mean())})
        return Selection(indices, torch.ones(len(indices)), scores=scores, info=info)

    # --- β search (docs/methods/ccs.md#ccs-beta) ----------------------------------------------------------
    def search_beta(self, ds: ImageDataset, difficulty: torch.Tensor, fraction: float, ctx: RunContext
                    ) -> tuple[float, dict[float, float]]:
        """The β of ``search_grid`` whose coreset of the training part gives the best accuracy on a
        class-balanced validation part (``val_fraction`` of each class) of the training set; ties go to the
        smaller β. Returns (β, {β: validation accuracy})."""
        gen = ctx.generator(29)
        train_pos, val_pos = [], []
        for idx, v in zip(class_positions(ds), class_budgets(ds.class_counts(), self.config.val_fraction)):
            perm = idx[torch.randperm(len(idx), generator=gen)]
            v = min(v, len(idx) - 1)  # every class keeps a training example
            val_pos.append(perm[:v])
            train_pos.append(perm[v:])
        train_idx = torch.sort(torch.cat(train_pos)).values
        val_idx = torch.sort(torch.cat(val_pos)).values
        if len(val_idx) == 0:
            raise SmallsetError("val_fraction leaves no validation example; raise it.", option="val_fraction")
        part, val = ds.subset(train_idx), ds.subset(val_idx)
        tried: dict[float, float] = {}
        for b in dict.fromkeys(parse_rates(self.config.search_grid, "search_grid", False)):
            sub, _ = self.coreset(part, difficulty[train_idx], fraction, b, ctx.generator(31))
            tried[b] = self.candidate_accuracy(part.subset(sub), val, ctx)
        best = max(tried.values())
        return min(b for b, acc in tried.items() if acc == best), tried

    def candidate_accuracy(self, train: ImageDataset, val: ImageDataset, ctx: RunContext) -> float:
        """Validation accuracy of a fresh ``ctx.model`` trained on ``train`` with ``search_protocol``."""
        from smallset.models import seeded_model
        from smallset.train import accuracy, fit, get_protocol

        seed = ctx.seed * 7919 + 37
        model = seeded_model(ctx.model, train.channels, train.num_classes, train.image_size, seed,
                             **(ctx.model_kwargs or {})).to(ctx.device)
        fit(model, train, get_protocol(self.config.search_protocol), seed=seed, device=ctx.device)
        return accuracy(model, val, ctx.device)
