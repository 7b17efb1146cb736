"""Streaming the real side of the condensers through the network in small chunks (issue 15).

A condenser's real batch is large (``batch_real`` images for every class: 2,560 at 256 × 10 classes) and
every activation of it, as one batch, is a tensor of hundreds of megabytes. On the CPU that costs twice:
glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh ``mmap`` calls and unmaps them
on free, so every such activation is page-faulted in again on each iteration (the kernel zeroes every page:
system time as large as the compute), and tensors that large stream through main memory instead of the
cache. Here the real side goes through the network ``chunk`` images at a time (per-image networks only:
instance norm, or BatchNorm in eval mode), so every activation stays a few megabytes, and
:func:`keep_freed_memory` keeps freed memory of that size in the process heap for reuse.

The maths is the same: a per-image network gives every image the same output whatever it is batched with,
class sums and gradients are sums over images (only the order of the floating-point additions changes).
On a GPU nothing is chunked (large batches are what it is fast at).

Memory model: docs/methods/condenser-memory.md.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

# Real images per chunk on the CPU: every activation of ConvNet-128 on 32×32 images is then ≤ 16.8 MB
# (32·128·32·32 floats), under glibc's largest mmap threshold, and fits the last-level cache. Chunks of 8–32
# measured within 5 % of each other on the 2-core benchmark machine (BENCHMARKS.md, issue 15); 256 (a class)
# and 2,560 (every class) were 1.95× slower with glibc's default settings, 2,560 still 2.5× with mmap off.
CPU_CHUNK = 32

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit)
_TRIM_THRESHOLD = 256 << 20
_ALLOC_LOCK = threading.Lock()
_alloc_done: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc (once per process) to serve every allocation up to 32 MiB from its heap and to keep up to
    256 MiB of freed heap for reuse instead of returning it to the kernel, so the chunk-sized activations of
    every iteration reuse the pages of the previous one (no page faults). It raises no peak: freed memory is
    kept only up to the process's earlier peak. Returns whether the settings took effect (False off glibc)."""
    global _alloc_done
    with _ALLOC_LOCK:
        if _alloc_done is None:
            _alloc_done = False
            if sys.platform.startswith("linux"):
                try:
                    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                    mallopt = libc.mallopt
                    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                    _alloc_done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and \
                        bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
                except (OSError, AttributeError):  # not glibc (musl, …): nothing to tune
                    _alloc_done = False
        return _alloc_done


def per_image(net: nn.Module) -> bool:
    """True when ``net`` in its current mode maps every image independently of the others in its batch
    (no BatchNorm layer in training mode), so that chunking the batch changes no output."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())


def chunk_for(device: torch.device | str, net: nn.Module | None = None) -> int | None:
    """The chunk size to stream real images with on ``device`` (None: the whole batch at once), for ``net``
    in its current mode (a BatchNorm net in training mode needs whole batches)."""
    if torch.device(device).type != "cpu":
        return None
    if net is not None and not per_image(net):
        return None
    return CPU_CHUNK


def chunks(n: int, chunk: int | None):
    """``(start, stop)`` pairs covering ``range(n)`` in steps of ``chunk`` (one pair when chunk is None)."""
    step = n if not chunk else chunk
    return [(s, min(n, s + step)) for s in range(0, n, max(1, step))] or [(0, 0)]


def embed_chunks(net: nn.Module, x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``net.embed(x)`` computed ``chunk`` rows at a time (gradients flow as through one call)."""
    if not chunk or len(x) <= chunk:
        return net.embed(x)
    return torch.cat([net.embed(x[s:e]) for s, e in chunks(len(x), chunk)])


def real_gradient(net: nn.Module, params: list[torch.Tensor], x: torch.Tensor, label: int,
                  chunk: int | None) -> list[torch.Tensor]:
    """∇ of the mean cross-entropy of ``net`` on ``x`` (all of class ``label``) with respect to ``params``,
    detached: one forward and backward of ``chunk`` rows at a time, the per-chunk gradients of the summed
    loss added up and divided by the batch size (the same gradient as one backward of the whole batch)."""
    n = len(x)
    if not chunk or n <= chunk:
        y = torch.full((n,), label, dtype=torch.long, device=x.device)
        return [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(x), y), params)]
    total: list[torch.Tensor] | None = None
    y = torch.full((chunk,), label, dtype=torch.long, device=x.device)
    for s, e in chunks(n, chunk):
        loss = F.cross_entropy(net(x[s:e]), y[: e - s], reduction="sum")
        grads = torch.autograd.grad(loss, params)
        if total is None:
            total = [g.detach().clone() for g in grads]
        else:
            for t, g in zip(total, grads):
                t.add_(g)
    for t in total:
        t.div_(n)
    return total


class PixelRows:
    """The training images kept once, in pixel scale (the dataset's own tensor on the CPU: no copy), and
    normalised per gathered batch: ``rows(idx)`` equals ``ds.normalized()[idx]`` bit for bit (the same
    element-wise ``(x − mean) / std``) without a second, normalised copy of the whole set in memory."""

    def __init__(self, images: torch.Tensor, mean, std, device: torch.device | str):
        self.device = torch.device(device)
        self.pixels = images.to(self.device)
        c = images.shape[1]
        self.mean = torch.tensor(mean, dtype=images.dtype).view(1, c, 1, 1).to(self.device)
        self.std = torch.tensor(std, dtype=images.dtype).view(1, c, 1, 1).to(self.device)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return (self.pixels[idx.to(self.device)] - self.mean) / self.std

    def __len__(self) -> int:
        return len(self.pixels)
