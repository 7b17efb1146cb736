"""GraNd (Paul, Ganguli & Dziugaite, NeurIPS 2021, "Deep Learning on a Data Diet"): keep the examples with the
largest per-example gradient norm ‖∇_θ CE(f(x; θ), y)‖₂ over all parameters, averaged over independently
initialised models, by default at initialisation.

The scoring runs and the selection are shared with EL2N (:mod:`smallset.prune._scoring`); the gradient norms
come from :mod:`smallset.prune._gradients`. Rationale and the paper's recipe: docs/methods/grand.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from smallset.config import option
from smallset.prune._gradients import full_grad_norms, last_layer_grad_norms
from smallset.prune._scoring import ScoreRunSelector, ScoringConfig
from smallset.prune.base import register_selector


def grand_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gradient: str = "full") -> torch.Tensor:
    """Per-example ‖∇ CE‖₂, the model in eval mode: over all parameters (``full``, the paper) or over the last
    linear layer only (``last_layer``, the closed form ‖p − e_y‖·sqrt(‖h‖² + 1))
    (docs/methods/grand.md#grand-score)."""
    model.eval()
    if gradient == "last_layer":
        return last_layer_grad_norms(model, x, y)
    return full_grad_norms(model, x, y)


@dataclass
class GraNdConfig(ScoringConfig):
    epochs: int = option(0, "training epochs of each scoring run before scoring (paper: 0, at initialisation; "
                            "it also reports epoch 20)", prepare=True, ge=0)
    gradient: Literal["full", "last_layer"] = option(
        "full", "parameters of the gradient norm: full = all (paper), last_layer = the classifier only (cheap "
                "closed form)", prepare=True)


@register_selector("grand")
class GraNdSelector(ScoreRunSelector):
    """Keep the largest mean per-example gradient norm (Paul et al., 2021)."""

    config_cls = GraNdConfig
    score_name = "grand"
    demo = {"models": 2}
    smoke = {"models": 2, "epochs": 1, "batch_size": 8}

    def score_model(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return grand_scores(model, x, y, self.config.gradient)
