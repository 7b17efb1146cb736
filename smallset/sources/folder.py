"""``folder:PATH``: an ImageFolder tree (one directory per class), with ``train/`` and ``test/`` inside or one
split."""
from __future__ import annotations

from pathlib import Path

import torch

from smallset.data import (
    SOURCES,
    ImageDataset,
    Source,
    SourceExample,
    SourceKind,
    channel_stats,
    decode_images,
    encode_png,
)
from smallset.errors import SmallsetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@SOURCES.register("folder")
class FolderSource(SourceKind):
    takes_path = True

    def load(self, argument: str, spec: str, data_root=None, download: bool = True) -> Source:
        root = Path(argument).expanduser()
        if not root.is_dir():
            raise SmallsetError(f"No such directory: {root}; folder: needs an ImageFolder tree.")
        if (root / "train").is_dir():
            train = read_image_folder(root / "train", spec)
            test = None
            if (root / "test").is_dir():
                test = read_image_folder(root / "test", spec, classes=train.classes, stats=(train.mean, train.std))
            return Source(spec, train, test)
        return Source(spec, read_image_folder(root, spec))

    def write_example(self, folder: Path, train: ImageDataset, test: ImageDataset) -> SourceExample:
        """PNG files ``SPLIT/CLASS/INDEX.png``; the classes load in sorted directory order."""
        for split, ds in (("train", train), ("test", test)):
            for i, (image, label) in enumerate(zip(ds.images, ds.labels.tolist())):
                target = folder / split / ds.classes[label] / f"{i:06d}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(encode_png(image))
        return SourceExample(f"folder:{folder}", sorted(train.classes))


def read_image_folder(root: Path, spec: str, classes: list[str] | None = None, stats=None) -> ImageDataset:
    """One split: the images of each class directory of ``root`` (``classes``: the training split's names)."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    names = classes or [p.name for p in class_dirs]
    if not class_dirs:
        raise SmallsetError(f"{root} has no class sub-directories; an image folder holds one directory per class.")
    blobs, labels = [], []
    for d in class_dirs:
        if d.name not in names:
            raise SmallsetError(f"Class directory {d} does not exist in the training split.")
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                blobs.append(f.read_bytes())
                labels.append(names.index(d.name))
    if not blobs:
        raise SmallsetError(f"No image files under {root}.")
    images = decode_images(blobs, what=str(root))
    mean, std = stats if stats is not None else channel_stats(images)
    return ImageDataset(images, torch.tensor(labels), names, mean, std, encoded=blobs, name=spec,
                        source_index=torch.arange(len(labels)))
