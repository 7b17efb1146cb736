"""Greedy facility location in torch, batched over many small ground sets (CREST's coreset step).

Maximises F(S) = Σ_{i∈V} max_{j∈S} s_ij greedily up to a budget on a padded batch of ground sets, with
s_ij = exp(−‖g_i − g_j‖₂ / d) (submodlib's dense "euclidean" kernel); ties go to the lowest index, and each
selected point is weighted by its cluster size.

Rationale and the paper's recipe: docs/methods/crest.md#facility-location and
docs/methods/crest.md#crest-coreset-selection.
"""
from __future__ import annotations

import torch

from smallset.errors import SmallsetError


def euclidean_similarity(features: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """s_ij = exp(−‖f_i − f_j‖₂ / scale) for features ``(..., n, d)``; scale defaults to d (submodlib)."""
    if features.ndim < 2:
        raise SmallsetError("Facility-location features must be at least 2-D (points × dimensions).")
    d = features.shape[-1] if scale is None else scale
    if d <= 0:
        raise SmallsetError("The similarity scale must be positive.")
    dist = torch.cdist(features, features)
    return torch.exp(-dist / d)


def facility_location_greedy(
    sim: torch.Tensor, budget: int | torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy maximisation of F(S) = Σ_i max_{j∈S} sim[i, j] on a batch of ground sets.

    Args:
        sim: ``(n, n)`` or ``(G, n, n)`` non-negative similarities (ground sets padded to a common n).
        budget: points to pick per ground set: an int, or a ``(G,)`` tensor of per-set budgets.
        valid: ``(G, n)`` bool mask of the real (non-padding) points; default all valid.

    Returns:
        ``(selected, weights)``, each ``(G, k)`` (``(k,)`` for an unbatched input) with k = max budget:
        the picked positions in greedy order and their cluster sizes (float). Slots beyond a set's
        budget (or beyond its number of valid points) hold index −1 and weight 0.
    """
    unbatched = sim.ndim == 2
    if unbatched:
        sim = sim.unsqueeze(0)
    if sim.ndim != 3 or sim.shape[1] != sim.shape[2]:
        raise SmallsetError(f"Similarities must be n×n or G×n×n, not {tuple(sim.shape)}.")
    g, n, _ = sim.shape
    device = sim.device
    if valid is None:
        valid = torch.ones(g, n, dtype=torch.bool, device=device)
    else:
        valid = valid.to(device=device, dtype=torch.bool)
    if isinstance(budget, torch.Tensor):
        budgets = budget.to(device=device, dtype=torch.long).reshape(-1)
        if budgets.numel() != g:
            raise SmallsetError(f"Expected {g} budgets, got {budgets.numel()}.")
    else:
        budgets = torch.full((g,), int(budget), dtype=torch.long, device=device)
    if bool((budgets < 0).any()):
        raise SmallsetError("A facility-location budget cannot be negative.")
    budgets = torch.minimum(budgets, valid.sum(1))
    k = int(budgets.max()) if g else 0

    simf = sim.float()
    vmask = valid.unsqueeze(2).float()  # (G, n, 1): only real points count in F
    cur = torch.zeros(g, n, dtype=simf.dtype, device=device)  # max_{j∈S} s_ij so far (F(∅) = 0)
    open_ = valid.clone()  # candidates not yet selected
    selected = torch.full((g, k), -1, dtype=torch.long, device=device)
    rows = torch.arange(g, device=device)
    for step in range(k):
        active = budgets > step
        gains = (torch.clamp(simf - cur.unsqueeze(2), min=0) * vmask).sum(1)  # (G, n): gain of adding j
        gains = gains.masked_fill(~open_, float("-inf"))
        j = gains.argmax(1)
        j = torch.where(active, j, torch.full_like(j, -1))
        selected[:, step] = j
        jj = j.clamp_min(0)
        col = simf[rows, :, jj]  # (G, n): s_{i, j}
        upd = active.unsqueeze(1)
        cur = torch.where(upd, torch.maximum(cur, col), cur)
        open_[rows[active], jj[active]] = False

    weights = torch.zeros(g, k, dtype=torch.float32, device=device)
    if k:
        sel_ok = selected >= 0
        cols = simf.gather(2, selected.clamp_min(0).unsqueeze(1).expand(g, n, k))  # (G, n, k): s_{i, S_m}
        cols = cols.masked_fill(~sel_ok.unsqueeze(1), float("-inf"))
        assign = cols.argmax(2)  # each point's most similar selected point (first in greedy order on ties)
        assign = assign.masked_fill(~valid, k)  # padding goes to an overflow bin
        counts = torch.zeros(g, k + 1, dtype=torch.float32, device=device)
        counts.scatter_add_(1, assign, torch.ones_like(assign, dtype=torch.float32))
        weights = counts[:, :k] * sel_ok
    if unbatched:
        return selected[0], weights[0]
    return selected, weights


def facility_location_value(sim: torch.Tensor, selected: torch.Tensor) -> float:
    """F(S) for one ground set: Σ_i max_{j∈S} sim[i, j] (0 for the empty set)."""
    selected = selected[selected >= 0]
    if selected.numel() == 0:
        return 0.0
    return float(sim[:, selected].max(1).values.sum())
