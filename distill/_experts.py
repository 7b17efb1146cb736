"""Expert trajectories: networks trained on the real data with their parameters saved after every epoch,
the cached artefact trajectory-matching condensers (MTT) learn from. Not a condenser: registers nothing.

A buffer is one directory in the cache (``$SMALLSET_CACHE``, default ``~/.cache/smallset``) under
``experts/``, named by a hash of everything an expert depends on (the training split's digest and
normalisation, the model and its options, the expert recipe, the seed, the device type):

    experts/<dataset>-<model>-<hash16>/
        manifest.json         format version, key parts, experts done, epochs, parameter count, seconds
        expert_000.pt         {"trajectory": (epochs+1)×P float32, "train_loss", "train_accuracy", "seconds"}
        expert_001.pt
        expert_002.part/      an expert being trained: epoch_0000.pt … one file per finished epoch
        .lock                 flock'ed while experts are trained (two processes never train the same expert)

Expert ``i`` draws its initialisation, batch order and augmentation from generators seeded from (seed, i)
only, so experts are independent of each other and of interruptions: a killed run resumes inside the
expert it was training (from its last finished epoch, bit-identical on the same device), finished experts
are reused, and a request for more experts than the buffer holds trains only the missing ones. Files are
written atomically and read with ``torch.load(weights_only=True)`` only (mmap'ed, so a large buffer is
paged in on demand). Rationale and layout: docs/methods/mtt.md#expert-trajectories.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset.atomic import write_atomic
from smallset.augment import DSA
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.models import seeded_model

CACHE_ENV = "SMALLSET_CACHE"
FORMAT_VERSION = 1
# ctx.generator offsets of expert i: EXPERT_OFFSET + 3·i + (0: network, 1: batch order, 2: augmentation).
EXPERT_OFFSET = 100_000


def cache_root() -> Path:
    """``$SMALLSET_CACHE`` or ``~/.cache/smallset``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "smallset").expanduser()


@dataclass(frozen=True)
class ExpertRecipe:
    """How every expert is trained (reference buffer.py: SGD, no momentum, no weight decay, no decay)."""

    epochs: int = 50
    lr: float = 0.01
    batch_size: int = 256
    dsa_strategy: str = "none"  # the DSA strategy applied to every mini-batch ("none": no augmentation)


@dataclass(frozen=True)
class ExpertBuffer:
    """The handle ``prepare()`` returns: where the trajectories are, what they are, how many to use.

    Small on purpose (the pipeline's preparation cache stores it); the tensors stay on disk."""

    path: str
    experts: int  # the first ``experts`` expert files are the ones to use
    manifest: dict = field(default_factory=dict, compare=True)

    @property
    def key_hash(self) -> str:
        return str(self.manifest.get("key_hash", ""))

    def file(self, i: int) -> Path:
        return Path(self.path) / expert_name(i)

    def available(self) -> bool:
        """Every expert file this handle names is still on disk (the cache may have been cleaned)."""
        return all(self.file(i).is_file() for i in range(self.experts))

    def load(self, i: int) -> torch.Tensor:
        """Expert ``i``'s trajectory, (epochs+1)×P float32 on the CPU, memory-mapped."""
        return load_expert(self.file(i), self.manifest.get("epochs"),
                           self.manifest.get("parameter_count"))["trajectory"]


def expert_name(i: int) -> str:
    return f"expert_{i:03d}.pt"


def key_parts(ds: ImageDataset, ctx: RunContext, recipe: ExpertRecipe) -> dict:
    """Everything an expert's parameters depend on (the number of experts is not part of it: experts are
    independent, so a buffer grows when more are asked for)."""
    return {
        "format_version": FORMAT_VERSION,
        "digest": ds.digest,
        "mean": [float(m) for m in ds.mean],
        "std": [float(s) for s in ds.std],
        "model": ctx.model,
        "model_kwargs": dict(sorted((ctx.model_kwargs or {}).items())),
        "recipe": asdict(recipe),
        "seed": int(ctx.seed),
        "device": torch.device(ctx.device).type,
    }


def key_hash(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def buffer_dir(ds: ImageDataset, ctx: RunContext, recipe: ExpertRecipe) -> tuple[Path, dict, str]:
    parts = key_parts(ds, ctx, recipe)
    h = key_hash(parts)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{ds.name or 'data'}-{ctx.model}")[:60]
    return cache_root() / "experts" / f"{label}-{h[:16]}", parts, h


# --- files ----------------------------------------------------------------------------------------
def _atomic_save(obj: Any, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def _atomic_write_json(obj: dict, path: Path) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=True, default=str)))


def _safe_load(path: Path, mmap: bool = False) -> dict:
    try:  # tensors and plain types only: a crafted file cannot run code
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad or unsafe file
        raise SmallsetError(f"The expert file {path} cannot be read safely ({type(e).__name__}); delete it "
                            f"(or its directory {path.parent}) to train it again.") from None


def load_expert(path: Path, epochs: int | None = None, params: int | None = None) -> dict:
    state = _safe_load(path, mmap=True)
    traj = state.get("trajectory") if isinstance(state, dict) else None
    if not isinstance(traj, torch.Tensor) or traj.ndim != 2 or (epochs is not None and traj.shape[0] != epochs + 1) \
            or (params is not None and traj.shape[1] != params):
        raise SmallsetError(f"The expert file {path} does not hold the expected trajectory; delete its directory "
                            f"{path.parent} to train the experts again.")
    return state


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the buffer while experts are trained (processes and threads alike)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SmallsetError(f"The expert cache {directory} cannot be created ({e.strerror or e}); set "
                            f"{CACHE_ENV} to a writable directory.") from None
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(directory / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def finished_experts(directory: Path) -> int:
    """How many experts, counted from 0 without a gap, have a finished file."""
    n = 0
    while (directory / expert_name(n)).is_file():
        n += 1
    return n


def write_manifest(directory: Path, parts: dict, h: str, epochs: int, param_shapes: dict[str, list[int]]) -> dict:
    """The manifest, rebuilt from the finished expert files (so it can never disagree with them)."""
    n = finished_experts(directory)
    seconds, loss, acc = [], [], []
    for i in range(n):
        st = load_expert(directory / expert_name(i), epochs)
        seconds.append(float(st.get("seconds", float("nan"))))
        loss.append(float(st["train_loss"][-1]) if len(st["train_loss"]) else float("nan"))
        acc.append(float(st["train_accuracy"][-1]) if len(st["train_accuracy"]) else float("nan"))
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": parts,
        "key_hash": h,
        "experts_done": n,
        "epochs": epochs,
        "snapshots": epochs + 1,
        "parameter_count": int(sum(int(torch.Size(s).numel()) for s in param_shapes.values())),
        "parameter_shapes": param_shapes,
        "seconds_per_expert": seconds,
        "final_train_loss": loss,
        "final_train_accuracy": acc,
        "files": [expert_name(i) for i in range(n)],
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _atomic_write_json(manifest, directory / "manifest.json")
    return manifest


# --- training ---------------------------------------------------------------------------------------
def flat_params(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).cpu().clone()


def param_shapes(net: nn.Module) -> dict[str, list[int]]:
    return {name: list(p.shape) for name, p in net.named_parameters()}


class _Expert:
    """The training state of one expert: network, SGD (stateless: no momentum), three generators."""

    def __init__(self, i: int, ds: ImageDataset, ctx: RunContext, recipe: ExpertRecipe):
        self.recipe = recipe
        self.gens = {k: ctx.generator(EXPERT_OFFSET + 3 * i + j) for j, k in enumerate(("net", "order", "aug"))}
        self.net = seeded_model(ctx.model, ds.channels, ds.num_classes, ds.image_size, self.gens["net"],
                                **(ctx.model_kwargs or {})).to(ctx.device).train()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=recipe.lr, momentum=0.0, weight_decay=0.0)
        self.dsa = DSA(recipe.dsa_strategy) if recipe.dsa_strategy not in ("", "none") else None

    def state(self) -> dict:
        return {k: g.get_state() for k, g in self.gens.items()}

    def restore(self, params: torch.Tensor, gens: dict) -> None:
        with torch.no_grad():  # copy_, not vector_to_parameters: that makes the parameters views of ``params``
            for p, v in zip(self.net.parameters(), torch.split(params, [p.numel() for p in self.net.parameters()])):
                p.copy_(v.view_as(p))
        for k, g in self.gens.items():
            g.set_state(gens[k])

    def epoch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """One shuffled pass in mini-batches of ``batch_size`` (the last one partial, as a DataLoader),
        each batch augmented with a fresh non-Siamese DSA draw; returns (mean loss, accuracy)."""
        n, b = len(x), self.recipe.batch_size
        perm = torch.randperm(n, generator=self.gens["order"]).to(x.device)
        total, correct = 0.0, 0
        for start in range(0, n, b):
            idx = perm[start:start + b]
            xb = x[idx]
            if self.dsa is not None:
                xb = self.dsa(xb, self.gens["aug"])
            out = self.net(xb)
            loss = F.cross_entropy(out, y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += float(loss.detach()) * len(idx)
            correct += int((out.detach().argmax(1) == y[idx]).sum())
        return total / n, correct / n


def probe_epoch_seconds(ds: ImageDataset, ctx: RunContext, recipe: ExpertRecipe, x: torch.Tensor,
                        y: torch.Tensor, batches: int = 2) -> float:
    """Seconds per expert epoch from timing ``batches`` mini-batches (after one warm-up batch) of a
    throw-away network; touches none of the experts' generators."""
    net = seeded_model(ctx.model, ds.channels, ds.num_classes, ds.image_size, 0,
                       **(ctx.model_kwargs or {})).to(ctx.device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    dsa = DSA(recipe.dsa_strategy) if recipe.dsa_strategy not in ("", "none") else None
    g = torch.Generator().manual_seed(0)
    b = min(recipe.batch_size, len(x))
    t0 = 0.0
    for k in range(batches + 1):
        if k == 1:
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
        idx = torch.randint(0, len(x), (b,), generator=g).to(x.device)
        xb = x[idx] if dsa is None else dsa(x[idx], g)
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    per_batch = (time.perf_counter() - t0) / batches
    return per_batch * -(-len(x) // recipe.batch_size)


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def train_expert(i: int, directory: Path, ds: ImageDataset, ctx: RunContext, recipe: ExpertRecipe,
                 x: torch.Tensor, y: torch.Tensor, bar=None) -> None:
    """Train expert ``i`` into ``directory/expert_i.pt``, resuming from ``expert_i.part/`` when an
    earlier run was interrupted inside it. Every finished epoch is saved there first (one small file
    each), so an interruption loses at most the epoch in progress."""
    part = directory / f"expert_{i:03d}.part"
    expert = _Expert(i, ds, ctx, recipe)
    snaps: list[torch.Tensor] = []
    losses: list[float] = []
    accs: list[float] = []
    spent = 0.0
    done = 0
    while (part / f"epoch_{done:04d}.pt").is_file():
        done += 1
    if done:  # resume: every snapshot so far, then the network and generators as they were after the last
        for e in range(done):
            st = _safe_load(part / f"epoch_{e:04d}.pt")
            snaps.append(st["params"])
            if e > 0:
                losses.append(float(st["loss"]))
                accs.append(float(st["accuracy"]))
            spent = float(st.get("seconds", 0.0))
        expert.restore(snaps[-1], st["generators"])
        if bar is not None:
            bar.update(done - 1)
    else:
        snaps.append(flat_params(expert.net))
        _atomic_save({"params": snaps[0], "generators": expert.state(), "seconds": 0.0}, part / "epoch_0000.pt")
        done = 1
    t0 = time.perf_counter()
    for e in range(done, recipe.epochs + 1):  # snapshot e = the network after epoch e
        loss, acc = expert.epoch(x, y)
        snaps.append(flat_params(expert.net))
        losses.append(loss)
        accs.append(acc)
        _atomic_save({"params": snaps[-1], "generators": expert.state(), "loss": loss, "accuracy": acc,
                      "seconds": spent + time.perf_counter() - t0}, part / f"epoch_{e:04d}.pt")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(expert=i, loss=f"{loss:.3f}", acc=f"{acc:.3f}")
    seconds = spent + time.perf_counter() - t0
    _atomic_save({"trajectory": torch.stack(snaps), "train_loss": torch.tensor(losses),
                  "train_accuracy": torch.tensor(accs), "seconds": seconds}, directory / expert_name(i))
    shutil.rmtree(part, ignore_errors=True)


def ensure_experts(ds: ImageDataset, ctx: RunContext, recipe: ExpertRecipe, experts: int,
                   what: str = "experts") -> ExpertBuffer:
    """The buffer for (ds, ctx, recipe) with at least ``experts`` finished experts: the cached ones are
    reused, the missing ones trained (a time estimate on stderr first; a progress bar with
    ``ctx.progress``)."""
    directory, parts, h = buffer_dir(ds, ctx, recipe)
    shapes = param_shapes(seeded_model(ctx.model, ds.channels, ds.num_classes, ds.image_size, 0,
                                       **(ctx.model_kwargs or {})))
    if finished_experts(directory) < experts:
        with _locked(directory):
            have = finished_experts(directory)  # another process may have trained them meanwhile
            if have < experts:
                x = ds.normalized().to(ctx.device)
                y = ds.labels.to(ctx.device)
                per_epoch = probe_epoch_seconds(ds, ctx, recipe, x, y)
                todo = experts - have
                sys.stderr.write(
                    f"[smallset] {what}: training {todo} expert trajectories ({ctx.model}, {recipe.epochs} epochs "
                    f"over {len(ds)} images each; {have} cached) in {directory}: about {per_epoch:.1f} s per epoch, "
                    f"{_human(per_epoch * recipe.epochs)} per expert, {_human(per_epoch * recipe.epochs * todo)} "
                    f"in all\n")
                bar = None
                if ctx.progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=todo * recipe.epochs, desc=f"{what}", unit="ep", leave=False,
                               mininterval=0.5, disable=None)
                try:
                    for i in range(have, experts):
                        train_expert(i, directory, ds, ctx, recipe, x, y, bar)
                        write_manifest(directory, parts, h, recipe.epochs, shapes)
                finally:
                    if bar is not None:
                        bar.close()
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("key_hash") != h or manifest.get("experts_done", 0) < experts:
        with _locked(directory):
            manifest = write_manifest(directory, parts, h, recipe.epochs, shapes)
    return ExpertBuffer(str(directory), experts, manifest)
