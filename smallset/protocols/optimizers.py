"""The optimisers of the evaluation."""
from __future__ import annotations

from typing import Iterable

import torch

from smallset.protocols.base import OPTIMIZERS, Optimizer, Protocol


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """SGD with the preset's momentum, weight decay and Nesterov flag (every preset so far)."""

    label = "SGD"

    def make(self, params: Iterable, protocol: Protocol, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay,
                               nesterov=protocol.nesterov)

    def describe(self, protocol: Protocol) -> str:
        return f"SGD lr {protocol.lr:g} momentum {protocol.momentum:g} wd {protocol.weight_decay:g}"
