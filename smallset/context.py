"""What every algorithm is told about the run it is part of (no Prefect, no MLflow here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from smallset.data import ImageDataset


@dataclass
class RunContext:
    """Shared run settings passed to selectors and condensers.

    ``model``/``model_kwargs`` name the network an algorithm scores, embeds or matches with;
    ``seed`` fixes every random choice; ``test`` is the held-out split (CREST reports its accuracy);
    ``checkpoint_dir``/``checkpoint_every``/``resume`` let long condensation runs survive interruption.
    """

    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    model: str = "convnet"
    model_kwargs: dict = field(default_factory=dict)
    progress: bool = False
    test: ImageDataset | None = None
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0
    resume: bool = False

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run seed (``offset`` separates independent streams)."""
        return torch.Generator().manual_seed(self.seed * 7919 + offset)
