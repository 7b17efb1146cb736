"""``RunOptions``: the settings every run shares, one pydantic model for the CLI, the three flows and the
deployments (Prefect validates flow parameters against it and renders it as a form).

Field-level rules (types, ranges, fixed choices) live here; checks that need the registries (is the
model known? the protocol?) are made once by :func:`smallset.tasks.spec.resolve_cell`. Each field's
``description`` is its help text on the command line; ``json_schema_extra["flag"]`` names a flag that
differs from the field name.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SEED_LIMIT = 2 ** 63  # seeds are int64 in torch.Generator.manual_seed


class RunOptions(BaseModel):
    """What a prune, distill or compare run is told besides its method and budget."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    source: str = Field("builtin:mnist-mini", description=(
        "where the data comes from: parquet:PATH, torchvision:NAME, folder:PATH or builtin:mnist-mini"))
    data_root: str | None = Field(None, description="where torchvision: datasets are stored or downloaded")
    model: str = Field("convnet", description=(
        "network the method scores/matches with and the evaluation trains (see `smallset methods`)"))
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="model option, e.g. width=64 (repeatable)",
                                         json_schema_extra={"flag": "--model-arg"})
    eval_models: list[str] = Field(default_factory=list, description=(
        "evaluate on these models instead of --model, e.g. convnet,resnet18,mlp,lenet (a matrix)"))
    protocol: str = Field("quick", description=(
        "evaluation recipe: quick (CPU-sized), demo (quick, 8 epochs), paper (300 epochs) or paper-1000"))
    eval_recipe: Literal["shared", "paper"] = Field("shared", description=(
        "shared: every reduced set is trained with the same --protocol/--eval-augment (a fair comparison); "
        "paper: each method's own paper recipe (to reproduce a paper's numbers)"))
    eval_augment: str = Field("none", description=(
        "training-time augmentation of the shared recipe: none, dsa[:STRATEGY], dc[:crop_scale_rotate] or crop_flip"))
    eval_epochs: int | None = Field(None, ge=1, description="override the protocol's number of epochs")
    eval_runs: int = Field(3, ge=1, description="evaluation trainings (seeds) to average")
    normalization: str = Field("auto", description=(
        "auto: the papers' constants for a recognised dataset (MNIST, FashionMNIST, SVHN, CIFAR-10/100), the "
        "data's statistics otherwise; data: always the data's; or a dataset name to force its constants"))
    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="fixes every random choice")
    device: str = Field("auto", description="auto (GPU when there is one), cpu or cuda")
    no_eval: bool = Field(False, description="write the reduced set without the evaluation training")
    progress: bool = Field(False, description="show progress bars", json_schema_extra={"cli": False})
    force: bool = Field(False, description="run even when the memory estimate exceeds the machine")

    def evaluation_models(self) -> list[str]:
        return list(self.eval_models) or [self.model]


RunnerName = Literal["threads", "dask"]
