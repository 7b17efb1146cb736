"""Condenser speed and memory against their own floor and against the code of another commit (issue 15).

For each row (condenser × dataset × ipc) at the papers' settings on the CPU — ConvNet-128 (``--model
convnet``: width 128, depth 3, instance norm), ``batch_real`` 256, the method's per-ipc defaults (DC/DSA
loops, DSA strategy of the dataset), ``--threads`` torch threads — two kinds of measurement, each in a
fresh Python process, so its peak RSS and page faults are its own:

- ``run``: the condenser of the code under test (this working tree) loads
  ``parquet:DATA/DATASET`` and does ``--iters`` iterations (``Condenser.step``); per iteration the wall
  and process CPU seconds (user + system), minor page faults (``resource.getrusage``) and the CPU seconds
  other processes used meanwhile (``/proc/stat``: a row measured beside other work shows it). Reported:
  medians with iteration 0 dropped, peak RSS of the whole process (``ru_maxrss``: torch, the loaded
  dataset and the iterations), the RSS after loading and after ``setup``, and the pre-run memory estimate
  (``smallset.tasks.steps.preflight``'s numbers) for this working tree. CAFE has no fixed iteration (its
  loops stop on accuracy probes): its row times one *outer step*, one image step plus one accuracy probe.
- ``floor`` (in the ``run`` process, right after its iterations, so both see the same machine: separate
  processes differ in speed, BENCHMARKS.md): the work no implementation of the iteration can
  skip, through the same network (``smallset.models``) on random inputs of the row's shapes, timed the same
  way (median, first repeat dropped), the fastest of streaming the real images in chunks of 32 or of a
  class's 256 images, with glibc's mmap off so that no chunk size pays for page faults:
  DM: the no-grad forward (``embed``) of the real batch of every class, plus the Siamese DSA of that
  batch; DC/DSA: per outer step and class, one forward + backward of the real batch (``∇θ`` of the
  mean cross-entropy; DSA: plus its Siamese DSA) and one forward + double backward of the class's
  synthetic images; times ``outer_loop``, plus the inner loop's ``(outer_loop − 1) · inner_loop`` epochs
  of training on the synthetic set; CAFE (per outer step): the no-grad forward (``layer_outputs``) of
  the real batch plus the no-grad forward of the probe batch.
- ``base`` (with ``--base COMMIT``): the ``run`` measurement of the code as of COMMIT, checked out with
  ``git worktree add --detach`` into a temporary folder (the main checkout is not touched) and imported
  from there (``PYTHONPATH`` and an import finder that maps the package folders of that commit's
  ``pyproject.toml``); the worktree is removed afterwards.

Output: one JSON object per measurement, appended to ``--json``, and a Markdown table: per row the
seconds per iteration (wall, CPU), its ratio to the floor, the speed-up over the base commit, the ratio to
the official code's figure where one was measured (``REFERENCE``), faults per iteration, peak RSS, and
the 1-minute load before each measurement and the CPU seconds other processes used per iteration (a row
with more than a few tenths there was measured beside other work). ``--table-only --json FILE`` re-prints
the table (the last measurement of each row and kind).

    flock /tmp/smallset-cpu.lock .venv/bin/python benchmarks/bench_speed.py \
        --rows dm-mnist-1,dm-cifar10-1 --iters 4 --base HEAD --json /tmp/bench_speed.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import utils
from utils import ROOT

METHODS = ("dm", "dc", "dsa", "cafe")
DATASETS = ("mnist", "cifar10")
ROWS = {f"{m}-{d}-{i}": (m, d, i) for m in METHODS for d in DATASETS for i in (1, 10)}
# The official DC/DSA/DM code on this machine type (2 threads, ConvNet-128, batch_real 256, quiet machine),
# measured by an earlier review: seconds per iteration and peak RSS in GB (issue 15).
REFERENCE = {
    "dm-cifar10-1": {"s_per_it": 1.91, "range": "1.91–1.93", "rss_gb": 2.7},
    "dm-mnist-1": {"s_per_it": 2.3, "range": "2.29–3.29", "rss_gb": 1.8},
    "dsa-cifar10-1": {"s_per_it": 5.41, "range": "5.41", "rss_gb": 2.9},
}
FLOOR_CHUNKS = (32, 256)


# --- running the code of a given root ---------------------------------------------------------------------
def use_code(root: Path) -> None:
    """Import ``smallset`` and its subpackages from ``root`` (its pyproject's package-dir), ahead of the
    editable install's finder."""
    import importlib.abc
    import importlib.util
    import tomllib

    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    dirs = {"smallset": root / "smallset"}
    for name, folder in cfg.get("tool", {}).get("setuptools", {}).get("package-dir", {}).items():
        if name:
            dirs[name] = root / folder

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in dirs:
                return importlib.util.spec_from_file_location(
                    name, dirs[name] / "__init__.py", submodule_search_locations=[str(dirs[name])])
            return None

    sys.meta_path.insert(0, Finder())


def cpu_busy_seconds() -> float:
    """CPU seconds all processes spent busy since boot (/proc/stat; 0 where unavailable)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall, own CPU (user+system), minor faults and other processes' CPU seconds of a block."""

    def __enter__(self):
        import resource

        self._r = resource.getrusage(resource.RUSAGE_SELF)
        self._busy, self._t = cpu_busy_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        import resource

        self.wall = time.perf_counter() - self._t
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.user, self.sys = r.ru_utime - self._r.ru_utime, r.ru_stime - self._r.ru_stime
        self.cpu = self.user + self.sys
        self.faults = r.ru_minflt - self._r.ru_minflt
        self.other = max(0.0, cpu_busy_seconds() - self._busy - self.cpu)

    def row(self) -> dict:
        return {"wall": self.wall, "cpu": self.cpu, "user": self.user, "sys": self.sys, "faults": self.faults,
                "other_cpu": self.other}


def rss_gb() -> float:
    return utils.rss_mib() / 1024


def peak_rss_gb() -> float:
    return utils.peak_rss_mib() / 1024


def summarise(samples: list[dict]) -> dict:
    """Medians over the samples, the first dropped when there are more than one."""
    kept = samples[1:] if len(samples) > 1 else samples
    return {k: statistics.median(s[k] for s in kept) for k in kept[0]}


# --- the worker (one measurement, in its own process) -------------------------------------------------------
def worker(args) -> dict:
    use_code(Path(args.code))
    SETTINGS.update(parse_settings(args.set))
    import torch

    utils.set_threads(args.threads)
    method, dataset, ipc = ROWS[args.row]
    out = {"row": args.row, "kind": args.kind, "method": method, "dataset": dataset, "ipc": ipc,
           "threads": torch.get_num_threads(), "load_before": os.getloadavg()[0], "torch": torch.__version__}
    import smallset.distill  # noqa: F401  (registers the condensers)

    out["rss_import_gb"] = rss_gb()
    out.update(measure_run(method, dataset, ipc, args))
    if args.kind == "run" and not args.no_floor:  # right after the run, in the same process: same machine state
        out["floor"] = floor(method, dataset, ipc, args)
    out.setdefault("peak_rss_gb", peak_rss_gb())
    out["load_after"] = os.getloadavg()[0]
    return out


SETTINGS: dict[str, str] = {}  # --set overrides (worker side)


def make_condenser(method: str, ipc: int):
    """The method's paper defaults for ``ipc`` with batch_real 256 and the ``--set`` overrides it has."""
    from smallset.distill.base import CONDENSERS

    cls = CONDENSERS.get(method)
    cfg = cls.config_for_ipc(ipc, batch_real=256)
    for key, value in SETTINGS.items():
        if hasattr(cfg, key):
            setattr(cfg, key, type(getattr(cfg, key))(value))
    return cls(cfg)


def measure_run(method: str, dataset: str, ipc: int, args) -> dict:
    import torch

    from smallset.context import RunContext

    src = utils.load(utils.dataset_spec(dataset, args.data))
    ds = src.train
    res = {"rss_loaded_gb": rss_gb(), "peak_loaded_gb": peak_rss_gb()}
    cond = make_condenser(method, ipc)
    ctx = RunContext(seed=0, model="convnet")
    cond.setup(ds, ipc, ctx)
    res["rss_setup_gb"] = rss_gb()
    samples = []
    net = cond._new_net() if method == "cafe" else None
    for it in range(args.iters):
        with Meter() as m:
            if method == "cafe":  # one outer step: an image step and an accuracy probe
                cond._image_step(net)
                cond._probe(net)
            else:
                cond.step(it)
        samples.append(m.row())
        if not args.quiet:
            print(f"  {args.kind} {args.row} it {it}: {m.wall:.2f} s wall, {m.cpu:.2f} s CPU, {m.faults} faults, "
                  f"other processes {m.other:.2f} s", file=sys.stderr, flush=True)
    res["iterations"] = samples
    res["median"] = summarise(samples)
    res["outer_loop"] = getattr(cond.config, "outer_loop", 1)
    res["rss_after_gb"] = rss_gb()
    res["peak_rss_gb"] = peak_rss_gb()  # before the estimate's own probe below
    res["estimate"] = estimate(cond, ds, ipc, ctx)
    del torch
    return res


def estimate(cond, ds, ipc, ctx) -> dict:
    """The pre-run estimate ``smallset.tasks.steps.preflight`` makes for this run, by the code under test's
    rule (a condenser that models its own working memory adds no generic batch; code without that rule:
    2,560 real images and a 256-image training batch of activations)."""
    from smallset import estimate as est_mod

    whole = bool(getattr(type(cond), "models_working_memory", False))
    own = cond.extra_memory_bytes(ds, ipc, ctx) if hasattr(cond, "extra_memory_bytes") else 0
    kw = dict(extra_images=0 if whole else 256 * ds.num_classes)
    if own:
        kw["extra_bytes"] = own
    est = est_mod.estimate_training(ds, ctx.model, ctx.model_kwargs, 0 if whole else 256, ctx.device,
                                    probe_steps=1, **kw)
    terms = cond.memory_breakdown(ds, ipc, ctx) if hasattr(cond, "memory_breakdown") else {}
    return {"peak_gb": est.peak_bytes / 2 ** 30, "own_gb": own / 2 ** 30,
            "terms_mb": {k: v / 2 ** 20 for k, v in terms.items()}}


# --- the floor ----------------------------------------------------------------------------------------------
def keep_freed_memory() -> None:
    """The floor's allocator: no mmap at all and nothing trimmed (glibc), so that even class-sized
    activations reuse heap pages (the floor is the compute, not the kernel zeroing fresh pages)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX
        libc.mallopt(-1, 2 ** 31 - 1)  # M_TRIM_THRESHOLD
    except OSError:
        pass


def timed(fn, reps: int) -> dict:
    samples = []
    for _ in range(reps):
        with Meter() as m:
            fn()
        samples.append(m.row())
    return summarise(samples)


def floor(method: str, dataset: str, ipc: int, args) -> dict:
    """Seconds per iteration (CAFE: per outer step) of the unavoidable work (module docstring)."""
    import torch
    import torch.nn.functional as F

    from smallset.augment import DSA, default_strategy
    from smallset.models import seeded_model

    keep_freed_memory()
    channels, size = (1, (28, 28)) if dataset == "mnist" else (3, (32, 32))
    k, n = 10, 256
    cfg = make_condenser(method, ipc).config
    g = torch.Generator().manual_seed(0)
    net = seeded_model("convnet", channels, k, size, 1)
    params = list(net.parameters())
    xr = torch.randn(k * n, channels, *size, generator=g)
    yr = torch.arange(k).repeat_interleave(n)
    xs = torch.randn(k * ipc, channels, *size, generator=g, requires_grad=True)
    ys = torch.arange(k).repeat_interleave(ipc)
    use_dsa = method == "dsa" or (method == "dm" and cfg.dsa) or (method == "cafe" and cfg.dsa)
    dsa = DSA(getattr(cfg, "dsa_strategy", "") or default_strategy(channels, dataset, method)) if use_dsa else None
    res: dict = {"chunks": {}}
    reps = args.floor_reps + 1
    if method in ("dm", "cafe"):
        feats = net.embed if method == "dm" else net.layer_outputs
        n_probe = k * getattr(cfg, "probe_per_class", 0)
        xp = torch.randn(n_probe, channels, *size, generator=g)

        def one(chunk):
            with torch.no_grad():
                x = xr
                if dsa is not None:
                    x, _ = dsa.siamese_groups([xr, xs.detach()], [yr, ys], generator=g, num_groups=k)
                for s in range(0, len(x), chunk):
                    feats(x[s:s + chunk])
                for s in range(0, len(xp), chunk):
                    net(xp[s:s + chunk])
    else:
        def one(chunk):
            for c in range(k):
                xrc, xsc = xr[c * n:(c + 1) * n], xs[c * ipc:(c + 1) * ipc]
                if dsa is not None:
                    xrc, xsc = dsa.siamese(xrc, xsc, generator=g)
                grads = None
                for s in range(0, n, chunk):
                    loss = F.cross_entropy(net(xrc[s:s + chunk]), yr[c * n + s:c * n + s + chunk], reduction="sum")
                    gg = torch.autograd.grad(loss / n, params)
                    grads = list(gg) if grads is None else [a + b for a, b in zip(grads, gg)]
                gs = torch.autograd.grad(F.cross_entropy(net(xsc), ys[c * ipc:(c + 1) * ipc]), params,
                                         create_graph=True)
                dist = sum(((a - b.detach()) ** 2).sum() for a, b in zip(gs, grads))
                torch.autograd.grad(dist, xs)

    for chunk in FLOOR_CHUNKS:
        one(chunk)  # warm-up
        res["chunks"][str(chunk)] = timed(lambda chunk=chunk: one(chunk), reps)
    best = min(res["chunks"].values(), key=lambda r: r["wall"])
    per_outer = dict(best)
    inner = None
    outer = getattr(cfg, "outer_loop", 1)
    if method in ("dc", "dsa") and outer > 1 and cfg.inner_loop:
        # Inner loop: epochs of SGD on the synthetic set in batch_train batches (with DSA for DSA); timed
        # over a few epochs and scaled to (outer_loop − 1) · inner_loop of them.
        opt = torch.optim.SGD(params, lr=0.0)
        xsd = xs.detach()

        def epochs(e=5):
            for _ in range(e):
                for s in range(0, len(xsd), cfg.batch_train):
                    xb = xsd[s:s + cfg.batch_train]
                    if dsa is not None:
                        xb = dsa(xb, generator=g)
                    loss = F.cross_entropy(net(xb), ys[s:s + cfg.batch_train])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()

        epochs(1)
        inner = {key: v / 5 for key, v in timed(epochs, reps).items()}
        res["inner_epoch"] = inner
    scale_inner = (outer - 1) * cfg.inner_loop if inner else 0
    res["median"] = {key: outer * per_outer[key] + scale_inner * (inner[key] if inner else 0) for key in per_outer}
    res["outer_loop"] = outer
    res["best_chunk"] = min(res["chunks"], key=lambda c: res["chunks"][c]["wall"])
    return res


# --- the driver -------------------------------------------------------------------------------------------
def spawn(row: str, kind: str, code: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--row", row, "--kind", kind,
           "--code", str(code), "--iters", str(iters_for(row, args)), "--threads", str(args.threads),
           "--data", args.data, "--floor-reps", str(args.floor_reps)] + (["--quiet"] if args.quiet else []) + \
        [a for kv in args.set for a in ("--set", kv)] + \
        (["--no-floor"] if args.no_floor else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(code), TQDM_DISABLE="1")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return {"row": row, "kind": kind, "error": f"worker exited with {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_settings(items: list[str]) -> dict[str, str]:
    out = {}
    for kv in items:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"--set takes FIELD=VALUE, not {kv!r}")
        out[key.strip()] = value.strip()
    return out


def iters_for(row: str, args) -> int:
    method, _, ipc = ROWS[row]
    if args.iters:
        return args.iters
    return 2 if method in ("dc", "dsa") and ipc >= 10 else 4  # an ipc-10 DC/DSA iteration is 10 outer steps


class BaseCheckout:
    """``git worktree add --detach`` of a commit into a temporary folder, removed on exit."""

    def __init__(self, commit: str):
        self.commit = commit
        self.path = Path(tempfile.mkdtemp(prefix="smallset-base-"))

    def __enter__(self) -> Path:
        self.sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", self.commit], check=True,
                                  stdout=subprocess.PIPE, text=True).stdout.strip()
        self.path.rmdir()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(self.path), self.sha],
                       check=True)
        return self.path

    def __exit__(self, *exc):
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(self.path)], check=False)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)


def fmt(v, spec=".2f", dash="–"):
    return dash if v is None else format(v, spec)


def table(records: list[dict]) -> str:
    by: dict[str, dict] = {}
    for r in records:
        if "error" not in r:
            name = r["row"] + (f" ({', '.join(r['settings'])})" if r.get("settings") else "")
            by.setdefault(name, {})[r["kind"]] = r
    lines = ["| row | s/it (wall; CPU) | floor s/it | ÷ floor | base s/it | speed-up | reference s/it | ÷ reference "
             "| faults/it (base) | peak RSS GB (base) | estimate GB | load (base) | other CPU s/it (base) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, kinds in by.items():
        run, base = kinds.get("run"), kinds.get("base")
        fl = (run or {}).get("floor")
        ref = REFERENCE.get(row) if row in REFERENCE else None  # rows with --set settings differ
        w = run["median"]["wall"] if run else None
        fw = fl["median"]["wall"] if fl else None
        bw = base["median"]["wall"] if base else None
        est = (run or {}).get("estimate") or {}
        lines.append(
            f"| {row} | {fmt(w)}; {fmt(run['median']['cpu'] if run else None)} | {fmt(fw)} "
            f"| {fmt(w / fw if w and fw else None)} | {fmt(bw)} | {fmt(bw / w if w and bw else None)}× "
            f"| {ref['range'] if ref else '–'} | {fmt(w / ref['s_per_it'] if w and ref else None)} "
            f"| {fmt(run['median']['faults'] if run else None, '.0f')} "
            f"({fmt(base['median']['faults'] if base else None, '.0f')}) "
            f"| {fmt(run['peak_rss_gb'] if run else None)} ({fmt(base['peak_rss_gb'] if base else None)}) "
            f"| {fmt(est.get('peak_gb'))} "
            f"| {fmt(run['load_before'] if run else None)} ({fmt(base['load_before'] if base else None)}) "
            f"| {fmt(run['median']['other_cpu'] if run else None)} "
            f"({fmt(base['median']['other_cpu'] if base else None)}) |")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = utils.parser(__doc__, threads=2, json="/tmp/bench_speed.jsonl", data=str(utils.DATA))
    ap.add_argument("--rows", default="dm-mnist-1,dm-cifar10-1,dm-cifar10-10,dc-mnist-1,dsa-cifar10-1",
                    help=f"comma list of {', '.join(ROWS)}")
    ap.add_argument("--iters", type=int, default=0, help="iterations per run (0: 4, or 2 for DC/DSA at ipc ≥ 10)")
    ap.add_argument("--floor-reps", type=int, default=2, help="timed repeats of the floor (after one dropped)")
    ap.add_argument("--base", default="", help="also run the code as of this commit (git worktree)")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field of every measured condenser (run, floor and base), e.g. "
                         "outer_loop=2 to time an ipc-10 DC/DSA iteration as 2 outer steps")
    ap.add_argument("--only-base", action="store_true", help="measure the --base commit only (the table reads "
                    "the other measurements from --json)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="run", help=argparse.SUPPRESS)
    ap.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = [r for r in utils.comma_list(args.rows) if r not in ROWS]
    if unknown and not args.worker:
        ap.error(f"unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}")
    parse_settings(args.set)
    return args


def report(rec: dict) -> None:
    """One measurement's line (and its floor's)."""
    med, row, kind = rec.get("median", {}), rec["row"], rec["kind"]
    print(f"{row} {kind}: {fmt(med.get('wall'))} s/it wall, {fmt(med.get('cpu'))} s CPU, "
          f"{fmt(med.get('faults'), '.0f')} faults/it, peak RSS {fmt(rec.get('peak_rss_gb'))} GB, "
          f"load {fmt(rec.get('load_before'))}{' ERROR ' + rec['error'] if 'error' in rec else ''}", flush=True)
    if "floor" in rec:
        fm = rec["floor"]["median"]
        print(f"{row} floor: {fmt(fm['wall'])} s/it wall, {fmt(fm['cpu'])} s CPU (best chunk "
              f"{rec['floor']['best_chunk']})", flush=True)


def run(args) -> list[dict]:
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return []
    if args.table_only:
        print(table(utils.read_rows(args.json)))
        return []
    rows = utils.comma_list(args.rows)
    utils.print_header()
    records = utils.RowWriter(args.json, peak_memory=False)
    stamp = {"machine": platform.node(), "cpus": os.cpu_count(), "settings": args.set}
    for row in rows if not args.only_base else ():
        report(records.write({**spawn(row, "run", ROOT, args), **stamp}))
    if args.base:
        with BaseCheckout(args.base) as path:
            commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], stdout=subprocess.PIPE,
                                    text=True).stdout.strip()
            for row in rows:
                report(records.write({**spawn(row, "base", path, args), **stamp, "base_commit": commit}))
    shown = records.rows
    if args.only_base and Path(args.json).exists():  # the table with this file's other measurements
        shown = utils.read_rows(args.json)
    print(table(shown))
    return records.rows


if __name__ == "__main__":
    run(parse_args())
