"""EL2N (Paul, Ganguli & Dziugaite, NeurIPS 2021, "Deep Learning on a Data Diet"): keep the examples with the
largest error L2 norm ‖softmax(f(x)) − onehot(y)‖₂, averaged over independently initialised models a few
epochs into training.

The scoring runs and the selection are shared with GraNd (:mod:`smallset.prune._scoring`). Rationale and the
paper's recipe: docs/methods/el2n.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset.config import option
from smallset.prune._scoring import ScoreRunSelector, ScoringConfig
from smallset.prune.base import register_selector

SCORE_CHUNK = 1024  # examples per eval forward pass


@torch.no_grad()
def el2n_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = SCORE_CHUNK) -> torch.Tensor:
    """‖softmax(model(x)) − onehot(y)‖₂ per example, the model in eval mode (docs/methods/el2n.md#el2n-score)."""
    model.eval()
    out = []
    for start in range(0, len(y), batch_size):
        p = F.softmax(model(x[start:start + batch_size]).float(), dim=1)
        yb = y[start:start + batch_size]
        p[torch.arange(len(yb), device=p.device), yb] -= 1.0
        out.append(torch.linalg.vector_norm(p, dim=1))
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class EL2NConfig(ScoringConfig):
    epochs: int = option(20, "training epochs of each scoring run before scoring (paper: 20 of 200 on CIFAR-10; "
                             "0: at initialisation)", prepare=True, ge=0)


@register_selector("el2n")
class EL2NSelector(ScoreRunSelector):
    """Keep the largest mean ‖softmax − one-hot‖ (Paul et al., 2021)."""

    config_cls = EL2NConfig
    score_name = "el2n"
    demo = {"models": 2, "epochs": 1}
    smoke = {"models": 2, "epochs": 1, "batch_size": 8}

    def score_model(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return el2n_scores(model, x, y)
