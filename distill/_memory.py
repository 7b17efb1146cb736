"""The memory model of DM, DC, DSA and CAFE (docs/methods/condenser-memory.md): the bytes a condensation holds
at its peak beyond the training split and the network, as a breakdown by what scales with ``batch_real``,
ipc and the number of classes. ``Condenser.extra_memory_bytes`` returns its total and the pre-run estimate
(``smallset.tasks.steps.preflight`` → ``smallset.estimate``) adds it to the data and model terms.
"""
from __future__ import annotations

import torch

from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.distill._streaming import chunk_for
from smallset.models import seeded_model

FLOAT = 4


def activation_bytes_per_image(ds: ImageDataset, ctx: RunContext) -> float:
    """Bytes of every module output of one image's forward pass through ``ctx.model`` (a 2-image probe on
    the CPU; in-place ReLU outputs are counted although they share their input's memory: an upper bound)."""
    from smallset.estimate import activation_bytes

    net = seeded_model(ctx.model, ds.channels, ds.num_classes, ds.image_size, 0, **(ctx.model_kwargs or {}))
    probe = torch.zeros(2, ds.channels, *ds.image_size)
    return activation_bytes(net, probe) / 2


def real_rows(ds: ImageDataset, batch_real: int, per_class: bool) -> int:
    """Real images held at once: one class's batch (``per_class``) or every class's."""
    counts = [min(int(n), int(batch_real)) for n in ds.class_counts()]
    return max(counts, default=0) if per_class else sum(counts)


def breakdown(ds: ImageDataset, ipc: int, ctx: RunContext, *, batch_real: int, per_class: bool,
              real_backward: bool, dsa: bool, syn_factor: float, syn_rows: int | None = None,
              inner_rows: int = 0, extra: dict[str, int] | None = None) -> dict[str, int]:
    """The model's terms in bytes (docs/methods/condenser-memory.md#terms):

    - ``synthetic set``: classes · ipc images, with their gradient and SGD momentum (3 copies);
    - ``synthetic activations``: ``syn_rows`` images (default: all classes · ipc) through the network with
      a graph kept for the backward, ``syn_factor`` × their forward outputs (DM, CAFE: 1 — measured 0.66
      on ConvNet-128, the in-place ReLU outputs being counted twice; DC/DSA's double backward of one
      class: 3);
    - ``real batch``: the real images held at once (every class's batch for DM/CAFE, one class's for
      DC/DSA), gathered and normalised (2 copies) plus, with DSA, the augmented copy and the warp's
      temporaries (3 more);
    - ``real activations``: the forward outputs of the real images one forward holds: a chunk of
      ``_streaming.CPU_CHUNK`` on the CPU, the whole batch elsewhere; twice that with a backward (DC/DSA);
    - ``inner loop``: DC/DSA's and CAFE's training on the synthetic set, a mini-batch of ``inner_rows``
      images forward and backward (streamed in chunks on the CPU as well);
    - ``extra``: method-specific terms (CAFE's last-layer features of the real batch, its probe batch).
    """
    k = ds.num_classes
    image = ds.channels * ds.image_size[0] * ds.image_size[1] * FLOAT
    act = activation_bytes_per_image(ds, ctx)
    n_syn = k * int(ipc)
    rows = real_rows(ds, batch_real, per_class)
    chunk = chunk_for(ctx.device) or rows
    terms = {
        "synthetic set": 3 * n_syn * image,
        "synthetic activations": int(syn_factor * (n_syn if syn_rows is None else syn_rows) * act),
        "real batch": int(rows * image * (2 + (3 if dsa else 0))),
        "real activations": int(min(chunk, rows) * act * (2 if real_backward else 1)),
        "inner loop": int(2 * min(chunk, inner_rows) * act),
    }
    terms.update(extra or {})
    return terms
