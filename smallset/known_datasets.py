"""The datasets the condensation papers use, with the constants their code uses, and how a loaded source is
recognised as one of them.

The reference code (DC/DSA/DM ``get_dataset``) normalises with fixed per-channel constants, not with
statistics of the data: CIFAR-10's widely copied std 0.2023/0.1994/0.2010 is not its true pixel std
(≈ 0.247). The synthetic images live in that normalised space, so the constants decide the scale of what a
condenser learns; a set is comparable with the papers' only under the same constants. A source is
recognised by its name (``torchvision:cifar10``, ``parquet:…/cifar10``, ``builtin:mnist-mini``) together
with a matching shape and class count, or by the content digest of a copy known here (the shared benchmark
files, whatever they are renamed to). Unrecognised data is normalised with its own statistics.
See docs/methods/evaluation.md#normalisation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownDataset:
    key: str
    channels: int
    size: tuple[int, int]
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dsa_flip: bool  # does the reference's DC/DSA strategy include flip for this dataset?
    aliases: tuple[str, ...] = ()
    train_digests: tuple[str, ...] = ()  # ImageDataset.digest of training splits known to be this dataset


KNOWN: dict[str, KnownDataset] = {d.key: d for d in (
    KnownDataset("mnist", 1, (28, 28), 10, (0.1307,), (0.3081,), dsa_flip=False, aliases=("mnist-mini",),
                 train_digests=(
                     "52b8310d8ff1f5f13bb38f61d02c3a47b38de2e18f307ecf76f3a64f516aade7",  # shared mnist (60k)
                     "e36f62df73063e2d83b35a48b8991b9c9424ad4aa6c85a737d3c10434b1d693a",  # builtin:mnist-mini
                 )),
    KnownDataset("fashion_mnist", 1, (28, 28), 10, (0.2861,), (0.3530,), dsa_flip=True,
                 aliases=("fashionmnist", "fashion-mnist", "fmnist")),
    KnownDataset("svhn", 3, (32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), dsa_flip=False),
    KnownDataset("cifar10", 3, (32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), dsa_flip=True,
                 aliases=("cifar-10",),
                 train_digests=("fe19ae6591444f732030f7f25322ec8f512acd2c4058122491521c0e2e75fd55",)),  # shared
    KnownDataset("cifar100", 3, (32, 32), 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), dsa_flip=True,
                 aliases=("cifar-100",)),
)}

NORMALIZATIONS = ("auto", "data", *KNOWN)


def _name_tokens(spec: str) -> list[str]:
    """Lower-case path components of a source string, last first: ``parquet:d/cifar10/train.parquet`` →
    ``["train", "cifar10", "d"]`` (suffixes dropped)."""
    arg = spec.split(":", 1)[-1].lower().rstrip("/")
    parts = [re.sub(r"\.(parquet|pq)$", "", p) for p in re.split(r"[/\\]", arg) if p]
    return list(reversed(parts))


def recognise(spec: str, channels: int, size: tuple[int, int], classes: int, digest=None) -> str | None:
    """The key of the known dataset a source is, or None. A name must come with the dataset's shape and
    class count; ``digest`` (the training split's content digest, or a callable giving it) is asked only
    when the name says nothing."""
    for token in _name_tokens(spec):
        if token in ("train", "test"):
            continue
        for d in KNOWN.values():
            if (token == d.key or token in d.aliases) and (d.channels, tuple(d.size), d.classes) == (
                    channels, tuple(size), classes):
                return d.key
        break  # only the innermost meaningful name counts
    if digest is not None:
        value = digest() if callable(digest) else digest
        for d in KNOWN.values():
            if value in d.train_digests:
                return d.key
    return None
