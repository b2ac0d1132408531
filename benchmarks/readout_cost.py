"""Cost of the task read-out against the mixture read-out at ToxCast's size, measured side by side.

    python benchmarks/readout_cost.py [--repeats 30] [--json benchmarks/results/readout_cost.json]

T = 617 tasks, K = 8 adapters, d = 300, r = 8, batches of B = 32 and 128 molecules (the embedded
NCI molecules, about 23 atoms each). Three levels, each timed as forward + backward (a training
step's work, without the optimiser), in interleaved order (mixture, task, mixture, task, ...), and
the median over `--repeats` runs reported with the task/mixture ratio:

- `readout`: the read-out alone from pooled inputs. mixture: logits = pool(h) W^T + c;
  task: logits = z_0 W^T + c + einsum("bkt,tk->bt", D W^T, R) (`cft.nn.model.expert_readout`);
- `last layer`: from the node states after the last insertion layer to the logits. mixture:
  h + s sum_k alpha_k(x) f_k(h), pool, head; task: phi(U h) pooled to [B, K*r], K products with V,
  then the einsum read-out;
- `model`: a whole `CftModel` forward + backward (GIN-VN 300 x 5, frozen, adapters at every layer,
  T = 617), `routing.readout` mixture vs task.

Runs on the CPU with the torch threads it is given (`--threads`, default 1: the numbers then do
not depend on what else the machine runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cft.nn.backbone import Backbone
from cft.nn.model import CftModel, expert_readout
from cft.spec import BackboneSpec, ModelSpec, PartSpec

T, K, D, R = 617, 8, 300, 8


def batches(sizes: list[int]):
    from ogb.utils import smiles2graph
    from torch_geometric.data import Batch, Data

    from cft.data.builtin import builtin_molecules

    smiles = builtin_molecules(max(sizes))
    graphs = []
    for s in smiles:
        g = smiles2graph(s)
        graphs.append(Data(x=torch.from_numpy(g["node_feat"]).long(), edge_index=torch.from_numpy(g["edge_index"]).long(),
                           edge_attr=torch.from_numpy(g["edge_feat"]).long()))
    return {b: Batch.from_data_list(graphs[:b]) for b in sizes}


def model(readout: str) -> CftModel:
    torch.manual_seed(0)
    bb = BackboneSpec(num_layers=5, hidden=D, dropout=0.5)
    tasks = [f"t{i}" for i in range(T)]
    part = PartSpec(name="toxcast", tasks=tasks, layers=list(range(5)), num_adapters=K, rank=R, embed_dim=32)
    spec = ModelSpec(backbone=bb, tasks=tasks, kinds=["binary"] * T, parts=[part], readout=readout)
    m = CftModel(Backbone(bb), spec, [np.eye(T, dtype=np.float32)])
    with torch.no_grad():
        for bank in m.adapters.values():
            bank.V.normal_(0, 0.02)
    return m.train()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cases(batch_sizes: list[int]):
    """(level, B) -> {"mixture": step, "task": step}: closures that run forward + backward once."""
    data = batches(batch_sizes)
    models = {name: model(name) for name in ("mixture", "task")}
    bank = models["task"].adapters["4"]
    out = {}
    for b, batch in data.items():
        n = batch.x.size(0)
        gen = torch.Generator().manual_seed(b)
        w = torch.randn(T, D, generator=gen, requires_grad=True)
        c = torch.zeros(T, requires_grad=True)
        gates = torch.softmax(torch.randn(T, K, generator=gen), dim=1).requires_grad_(True)
        pooled = torch.randn(b, D, generator=gen, requires_grad=True)
        deltas = torch.randn(b, K, D, generator=gen, requires_grad=True)
        h = torch.randn(n, D, generator=gen, requires_grad=True)
        alpha = torch.softmax(torch.randn(b, K, generator=gen), dim=1).requires_grad_(True)
        index = batch.batch

        def pool(x, index=index, b=b):
            return torch.zeros(b, x.size(1)).index_add_(0, index, x) / torch.bincount(index, minlength=b).clamp_min(1)[:, None]

        out[("readout", b)] = {
            "mixture": lambda pooled=pooled, w=w, c=c: torch.nn.functional.linear(pooled, w, c).sum().backward(),
            "task": lambda pooled=pooled, deltas=deltas, w=w, c=c, gates=gates: expert_readout(pooled, deltas, w, c, gates).sum().backward(),
        }

        def mixture_last(h=h, alpha=alpha, index=index, w=w, c=c, pool=pool):
            adapted = h + bank(h, alpha[index])
            torch.nn.functional.linear(pool(adapted), w, c).sum().backward()

        def task_last(h=h, w=w, c=c, gates=gates, pool=pool, b=b):
            act = pool(bank.activations(h).flatten(1)).view(b, K, R)
            expert_readout(pool(h), bank.expert_updates(act), w, c, gates).sum().backward()

        out[("last layer", b)] = {"mixture": mixture_last, "task": task_last}
        out[("model", b)] = {name: (lambda m=m, batch=batch: m(batch).sum().backward()) for name, m in models.items()}
    return out


def machine(threads: int) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False).stdout.strip()

    paths = ["cft/nn", "benchmarks/readout_cost.py"]
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": threads, "python": platform.python_version(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "code_commit": git("log", "-1", "--format=%h", "--", *paths),
        "code_dirty": bool(git("status", "--porcelain", "--", *paths)),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "readout_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    results = []
    for (level, b), steps in cases(sizes).items():
        reps = args.repeats if level != "model" else max(5, args.repeats // 3)
        times = {name: [] for name in steps}
        for i in range(args.warmup + reps):
            for name, step in steps.items():  # interleaved: mixture, task, mixture, task, ...
                seconds = timed(step)
                if i >= args.warmup:
                    times[name].append(seconds)
        row = {"level": level, "batch": b, "repeats": reps}
        for name, values in times.items():
            row[f"{name}_ms"] = round(1000 * statistics.median(values), 4)
        row["task_over_mixture"] = round(row["task_ms"] / row["mixture_ms"], 3)
        results.append(row)
        print(f"{level:>10}  B={b:<4} mixture {row['mixture_ms']:9.3f} ms   task {row['task_ms']:9.3f} ms   task/mixture {row['task_over_mixture']:.2f}x")
    report = {
        "what": f"forward + backward, median of interleaved repeats; T={T}, K={K}, d={D}, r={R}; CPU",
        "machine": machine(args.threads),
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
