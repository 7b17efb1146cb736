"""Per-example gradient norms of the cross-entropy loss, shared by the selectors that score by them
(GEDA, GraNd). Not a selector: registers nothing."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset.errors import SmallsetError


@torch.no_grad()
def last_layer_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
                          ) -> torch.Tensor:
    """‖∇_{W,b} CE‖ of the last linear layer per example: ‖softmax(z) − e_y‖ · sqrt(‖h‖² + 1)."""
    if not isinstance(getattr(model, "classifier", None), nn.Linear):
        raise SmallsetError("gradient='last_layer' needs a model whose classifier is one nn.Linear layer.")
    model.eval()
    out = []
    for start in range(0, len(y), batch_size):
        h = model.embed(x[start:start + batch_size]).flatten(1)
        p = F.softmax(model.classifier(h), dim=1)
        p[torch.arange(len(h), device=h.device), y[start:start + batch_size]] -= 1.0
        out.append(torch.linalg.vector_norm(p, dim=1) * torch.sqrt((h * h).sum(1) + 1.0))
    return torch.cat(out)


def full_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """‖∇_θ CE‖ over all parameters per example, batched with ``torch.func.vmap(grad(...))``."""
    from torch.func import functional_call, grad, vmap

    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    if chunk is None:  # bound the per-example gradient memory to ~2**26 floats
        chunk = max(1, min(256, 2 ** 26 // max(1, sum(v.numel() for v in params.values()))))

    def loss(p, b, xi, yi):
        return F.cross_entropy(functional_call(model, (p, b), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, None, 0, 0))
    out = []
    for start in range(0, len(y), chunk):
        grads = per_example(params, buffers, x[start:start + chunk], y[start:start + chunk])
        sq = sum(g.flatten(1).pow(2).sum(1) for g in grads.values())
        out.append(sq.sqrt().detach())
    return torch.cat(out)
