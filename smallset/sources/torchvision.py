"""``torchvision:NAME``: a torchvision dataset (mnist, fashion_mnist, cifar10, cifar100, svhn) stored under
``data_root`` (default ``$SMALLSET_DATA_ROOT`` or ``~/.cache/smallset/torchvision``), downloaded when
``download=True``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from smallset.data import SOURCES, ImageDataset, Source, SourceExample, SourceKind, channel_stats
from smallset.errors import SmallsetError

TORCHVISION_SETS = {
    # name: (class, split keyword style)
    "mnist": ("MNIST", "train"),
    "fashion_mnist": ("FashionMNIST", "train"),
    "cifar10": ("CIFAR10", "train"),
    "cifar100": ("CIFAR100", "train"),
    "svhn": ("SVHN", "split"),
}


@SOURCES.register("torchvision")
class TorchvisionSource(SourceKind):
    def load(self, argument: str, spec: str, data_root=None, download: bool = True) -> Source:
        name = argument.lower()
        if name not in TORCHVISION_SETS:
            raise SmallsetError(f"Unknown torchvision dataset {argument!r}; supported: "
                                f"{', '.join(TORCHVISION_SETS)}.")
        root = str(data_root or os.environ.get("SMALLSET_DATA_ROOT", "~/.cache/smallset/torchvision"))
        root = os.path.expanduser(root)
        tr, te = _split(name, root, True, download), _split(name, root, False, download)
        xtr, ytr = _to_tensors(tr)
        xte, yte = _to_tensors(te)
        classes = [str(c) for c in getattr(tr, "classes", [])] or [str(i) for i in range(int(ytr.max()) + 1)]
        mean, std = channel_stats(xtr)
        train = ImageDataset(xtr, ytr, classes, mean, std, name=spec, source_index=torch.arange(len(ytr)))
        test = ImageDataset(xte, yte, classes, mean, std, name=spec)
        return Source(spec, train, test)

    def write_example(self, folder: Path, train: ImageDataset, test: ImageDataset) -> SourceExample | None:
        """Grey images as MNIST's raw IDX files under ``folder/MNIST/raw`` (loaded with download off)."""
        from torchvision.datasets import MNIST

        if train.channels != 1:
            return None
        raw = folder / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for prefix, ds in (("train", train), ("t10k", test)):
            pixels = (ds.images[:, 0] * 255).round().to(torch.uint8).numpy()
            n, h, w = pixels.shape
            (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
                np.array([0x803, n, h, w], dtype=">i4").tobytes() + pixels.tobytes())
            (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
                np.array([0x801, n], dtype=">i4").tobytes() + ds.labels.to(torch.uint8).numpy().tobytes())
        return SourceExample("torchvision:mnist", list(MNIST.classes), {"data_root": folder, "download": False})


def _split(name: str, root: str, train: bool, download: bool):
    import torchvision

    cls_name, style = TORCHVISION_SETS[name]
    cls = getattr(torchvision.datasets, cls_name)
    kw = {"train": train} if style == "train" else {"split": "train" if train else "test"}
    try:
        return cls(root=root, download=download, **kw)
    except (RuntimeError, OSError) as e:
        raise SmallsetError(
            f"Could not load torchvision {name} from {root} ({e}); pass --data-root where it is stored, "
            f"or run online so it can be downloaded."
        ) from None


def _to_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    data = ds.data
    data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if data.ndim == 3:  # N×H×W grey
        data = data[:, None]
    elif data.shape[-1] == 3:  # N×H×W×C
        data = data.transpose(0, 3, 1, 2)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return torch.from_numpy(np.ascontiguousarray(data)).float().div_(255.0), labels
