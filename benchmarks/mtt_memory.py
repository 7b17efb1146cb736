"""Measured peak memory of MTT steps against ``MTTCondenser.graph_bytes`` (the unrolled graph's size) and
``extra_memory_bytes`` (what the pre-run estimate adds: on the CPU the graph × the heap's retention), the
memory model of docs/methods/mtt.md#mtt-memory.

Each configuration runs in a fresh subprocess: ``--iterations`` student unrolls of ``syn_steps`` steps (DSA on)
over random synthetic images of the model's input shape, each with the trajectory loss and its backward. CPU:
the peak resident set (VmHWM after resetting it through /proc/self/clear_refs, Linux), by default with
``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors leave the resident set at once (the graph's own size);
``--malloc default`` keeps glibc's own threshold, as a normal run does; CUDA: ``max_memory_allocated``.
``--json FILE`` also appends one row per configuration.

    .venv/bin/python benchmarks/mtt_memory.py                      # the table of docs/methods/mtt.md (CPU)
    .venv/bin/python benchmarks/mtt_memory.py --malloc default --iterations 4 --configs convnet-s:1:28:10:30:0
    .venv/bin/python benchmarks/mtt_memory.py --device cuda --configs convnet:3:32:10:30:0
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import utils

DEFAULT = ("convnet-s:1:28:10:5:0,convnet-s:1:28:10:10:0,convnet-s:1:28:10:20:0,convnet-s:1:28:10:20:50,"
           "convnet-s:1:28:50:10:100,convnet-s:1:28:1:30:0,convnet:3:32:10:5:0,convnet:3:32:10:10:0,"
           "convnet:3:32:10:20:0,convnet:3:32:10:20:50,convnet:3:32:50:10:100,convnet:3:32:1:30:0")


def measure(model: str, channels: int, size: int, ipc: int, steps: int, batch: int, device: str,
            iterations: int = 1) -> dict:
    import torch

    from smallset.augment import DSA
    from smallset.context import RunContext
    from smallset.data import ImageDataset
    from smallset.distill.mtt import FlatModel, MTTCondenser, student_batches, trajectory_loss, unroll
    from smallset.models import seeded_model

    dev = torch.device(device)
    ds = ImageDataset(images=torch.rand(2000, channels, size, size), labels=torch.arange(10).repeat(200),
                      classes=[str(i) for i in range(10)], mean=(0.5,) * channels, std=(0.25,) * channels, name="fake")
    cond = MTTCondenser(MTTCondenser.make_config({"syn_steps": steps, "batch_syn": batch}, ipc))
    graph = cond.graph_bytes(ds, ipc, RunContext(model=model, device=dev))  # the graph's own size
    process = cond.extra_memory_bytes(ds, ipc, RunContext(model=model, device=dev))  # what the estimate adds
    net = seeded_model(model, channels, 10, (size, size), 0).to(dev).train()
    fm = FlatModel(net)
    syn = torch.randn(10 * ipc, channels, size, size, device=dev, requires_grad=True)
    labels = torch.arange(10, device=dev).repeat_interleave(ipc)
    opt = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    lr = torch.tensor(0.01, device=dev, requires_grad=True)
    start = torch.cat([p.detach().flatten() for p in net.parameters()])
    target = start + 0.01 * torch.randn_like(start)
    g = torch.Generator().manual_seed(0)
    dsa = DSA("color_crop_cutout_flip_scale_rotate")
    batches = [b.to(dev) for b in student_batches(len(syn), batch or len(syn), steps, g)]
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        utils.clear_peak()
        base = utils.status_bytes("VmRSS")
    for _ in range(iterations):
        theta = unroll(fm, start, syn, labels, lr, batches, lambda x: dsa(x, g))
        loss = trajectory_loss(theta, start, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        del theta, loss
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = utils.status_bytes("VmHWM") - base
    return {"model": model, "channels": channels, "size": size, "ipc": ipc, "syn_steps": steps,
            "batch_syn": batch or 10 * ipc, "device": device, "iterations": iterations, "measured_mib": peak / 2**20,
            "graph_mib": graph / 2**20, "estimate_mib": process / 2**20}


def measure_in_child(config: str, args) -> dict:
    """:func:`measure` of ``MODEL:CHANNELS:SIZE:IPC:SYN_STEPS:BATCH_SYN`` in a fresh process (its own peak)."""
    env = dict(os.environ)
    if args.malloc == "mmap":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, __file__, "--one", config, "--device", args.device,
                          "--threads", str(args.threads), "--iterations", str(args.iterations)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    ap = utils.parser(__doc__, threads=2, device="cpu", json="")
    ap.add_argument("--configs", default=DEFAULT, help="MODEL:CHANNELS:SIZE:IPC:SYN_STEPS:BATCH_SYN,… (0 = all)")
    ap.add_argument("--iterations", type=int, default=1, help="unroll + backward this many times in one process "
                                                                 "(the peak over all of them)")
    ap.add_argument("--malloc", choices=("mmap", "default"), default="mmap",
                    help="mmap: MALLOC_MMAP_THRESHOLD_=65536, freed tensors leave the resident set at once (the "
                         "model's calibration); default: glibc's own threshold, as in a normal run")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # the child process
    return ap.parse_args(argv)


def run(args) -> list[dict]:
    if args.one:  # the child: one measurement, printed as JSON
        utils.set_threads(args.threads)
        m, c, s, ipc, steps, batch = args.one.split(":")
        print(json.dumps(measure(m, int(c), int(s), int(ipc), int(steps), int(batch), args.device, args.iterations)))
        return []
    utils.print_header(malloc=args.malloc)
    print(f"| model, images | ipc | N | batch_syn | measured MiB ({args.malloc} malloc, {args.iterations} iterations) "
          "| graph MiB (`graph_bytes`) | estimate MiB (`extra_memory_bytes`) | graph / measured "
          "| estimate / measured |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = utils.RowWriter(args.json, peak_memory=False)
    for config in utils.comma_list(args.configs):
        r = rows.write({**measure_in_child(config, args), "malloc": args.malloc})
        print(f"| {r['model']}, {r['channels']}×{r['size']}×{r['size']} | {r['ipc']} | {r['syn_steps']} | "
              f"{r['batch_syn']} | {r['measured_mib']:.0f} | {r['graph_mib']:.0f} | {r['estimate_mib']:.0f} | "
              f"{r['graph_mib'] / max(r['measured_mib'], 1e-9):.2f} | "
              f"{r['estimate_mib'] / max(r['measured_mib'], 1e-9):.2f} |", flush=True)
    return rows.rows


if __name__ == "__main__":
    run(parse_args())
