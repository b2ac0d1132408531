"""Where a recipe's training step goes, by operator, and how fast its matrix products run against
this CPU's best on the same shapes.

    python benchmarks/step_profile.py [--recipe recipes/tox21.yaml] [--steps 20] [--warmup 10]
                                      [--batch-size N] [--threads 2] [--json benchmarks/results/step_profile.json]

One process, the recipe's model on `--warmup` + 2 x `--steps` of its training batches, each step
`cft train`'s forward, loss (`cft.training.trainer.batch_loss`), backward and AdamW step at the
frozen products' precision `train.frozen_bf16` resolves to on this CPU (`cft train` adds gradient
clipping, the weight average, the schedule and validation). After the warm-up, `--steps` steps
are timed plainly (graphs/s) and `--steps` more under torch.profiler with FLOP counts. Reported:

- the profiled steps' self CPU time in groups: matrix products (`aten::mm`, `addmm`, `addmm_`,
  `bmm`, `baddbmm`) by input dtype and size (large: at least LARGE_FLOPS a call, which at a
  recipe's batch are the frozen `Linear`s' products over every atom of the batch; small: the
  adapters' low-rank products, the virtual node's per-molecule rows, the heads), message passing
  (gathers and scatters over the edges: `index_select`, `gather`, `scatter_add_`, `index_add_`,
  ...), and everything else; and the operators that take the most time;
- each product group's FLOPs (the profiler's 2·M·K·N) and GFLOP/s;
- the reference: the most time-consuming large shape of each dtype multiplied alone in a loop
  (`REFERENCE_REPEATS` times): what this CPU does on that shape with nothing around it. The step's
  large products as a fraction of it say how much a faster product could still give.

The backbone is randomly initialised (a step's cost does not depend on its weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from training_steps import graphs_per_second, training_setup  # noqa: E402

from cft.files.atomic import atomic_write_json  # noqa: E402
from cft.nn.frozen import PRECISION_NAMES  # noqa: E402
from cft.recipe.load import load_recipe  # noqa: E402
from cft.training.inference import frozen_bf16_wanted  # noqa: E402

PRODUCTS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"}
MESSAGE_PASSING = {"aten::index_select", "aten::gather", "aten::scatter_add_", "aten::scatter_add", "aten::index_add_",
                   "aten::scatter_reduce", "aten::scatter_reduce_", "aten::index_select_backward", "aten::embedding_dense_backward"}
LARGE_FLOPS = 50e6  # a 300x600 frozen Linear over ~280 atoms (a batch of 64 molecules has ~1,000)
REFERENCE_REPEATS = 50
TOP_OPERATORS = 12
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROFILER_DTYPES = {"float": "fp32", "c10::BFloat16": "bf16"}  # the profiler's names of them
TOP_SMALL_SHAPES = 8


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/tox21.yaml")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "step_profile.json")
    return parser.parse_args()


def group_of(name: str, dtype: str, flops: int) -> str:
    """The group an operator call's self time counts in (see the module docstring)."""
    if name in PRODUCTS:
        return f"{'large' if flops >= LARGE_FLOPS else 'small'} products, {dtype}"
    if name in MESSAGE_PASSING:
        return "message passing (gathers, scatters)"
    return "everything else"


def grouped(events) -> tuple[dict[str, dict], dict[str, dict], dict[tuple, dict]]:
    """(groups, operators, large shapes) from the profiler's events: per group and per operator name
    the self CPU seconds, calls and FLOPs; per large product shape (dtype, M, K, N) its seconds and
    calls. A product of two matrices counts 2·M·K·N FLOPs (the profiler counts none for `addmm_`)."""
    groups: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "calls": 0, "flops": 0})
    operators: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "calls": 0})
    shapes: dict[tuple, dict] = defaultdict(lambda: {"seconds": 0.0, "calls": 0})
    for e in events:
        if e.device_type != torch.autograd.DeviceType.CPU:
            continue
        seconds, flops, dtype, shape = e.self_cpu_time_total / 1e6, 0, "", None
        if e.name in PRODUCTS:
            dtype = next((PROFILER_DTYPES.get(d, d) for d in (e.input_dtypes or []) if d), "?")
            matrices = [s for s in (e.input_shapes or []) if len(s) == 2][-2:]  # addmm/addmm_: (bias or self), mat1, mat2
            if len(matrices) == 2:
                (m, k), (_, n) = matrices
                shape, flops = (dtype, m, k, n), 2 * m * k * n
            else:  # bmm, baddbmm: the profiler's count
                flops = int(e.flops or 0)
        group = groups[group_of(e.name, dtype, flops)]
        for entry in (group, operators[e.name]):
            entry["seconds"] += seconds
            entry["calls"] += 1
        group["flops"] += flops
        if shape is not None and flops >= LARGE_FLOPS:
            shapes[shape]["seconds"] += seconds
            shapes[shape]["calls"] += 1
    return dict(groups), dict(operators), dict(shapes)


def reference_gflops(dtype: str, m: int, k: int, n: int) -> float:
    """GFLOP/s of [m, k] @ [k, n] in `dtype`, multiplied alone REFERENCE_REPEATS times (after one
    warm-up product)."""
    torch_dtype = DTYPES.get(dtype, torch.float32)
    a, b = torch.randn(m, k).to(torch_dtype), torch.randn(k, n).to(torch_dtype)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(REFERENCE_REPEATS):
        torch.mm(a, b)
    return 2 * m * k * n * REFERENCE_REPEATS / (time.perf_counter() - start) / 1e9


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from provenance import machine

    recipe_path = REPO / args.recipe
    train = load_recipe(recipe_path).train
    model, optimizer, batches = training_setup(recipe_path, args.data.resolve(), args.warmup + 2 * args.steps, args.batch_size)
    warm, timed, profiled = batches[: args.warmup], batches[args.warmup : args.warmup + args.steps], batches[args.warmup + args.steps :]
    graphs_per_second(model, optimizer, warm, train)
    plain = graphs_per_second(model, optimizer, timed, train)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        start = time.perf_counter()
        graphs_per_second(model, optimizer, profiled, train)
        wall = time.perf_counter() - start
    groups, operators, shapes = grouped(prof.events())
    profiled_seconds = sum(g["seconds"] for g in groups.values())
    reference = {}
    for dtype in sorted({key[0] for key in shapes}):
        (_, m, k, n), spent = max(((key, s) for key, s in shapes.items() if key[0] == dtype), key=lambda item: item[1]["seconds"])
        in_step = 2 * m * k * n * spent["calls"] / spent["seconds"] / 1e9
        reference[dtype] = {"shape": [m, k, n], "calls_in_steps": spent["calls"], "in_steps_gflops": in_step, "alone_gflops": reference_gflops(dtype, m, k, n)}
    frozen = frozen_bf16_wanted(train.frozen_bf16, torch.device("cpu"))
    command = (f"python benchmarks/step_profile.py --recipe {args.recipe} --steps {args.steps} --warmup {args.warmup}"
               + (f" --batch-size {args.batch_size}" if args.batch_size else "") + f" --threads {args.threads}")
    result = {
        "machine": machine() | {"torch_threads": args.threads}, "command": command, "recipe": args.recipe, "batch_size": len(batches[0].y),
        "steps": args.steps, "precision": PRECISION_NAMES[frozen], "graphs_per_second": plain, "profiled_wall_seconds": wall,
        "profiled_self_seconds": profiled_seconds,
        "groups": {name: g | {"share": g["seconds"] / profiled_seconds, "gflops": g["flops"] / g["seconds"] / 1e9 if g["flops"] else None}
                   for name, g in sorted(groups.items(), key=lambda item: -item[1]["seconds"])},
        "top_operators": {name: o | {"share": o["seconds"] / profiled_seconds}
                          for name, o in sorted(operators.items(), key=lambda item: -item[1]["seconds"])[:TOP_OPERATORS]},
        "reference": reference,
    }
    print(table(result), flush=True)
    atomic_write_json(args.json, result)


def table(result: dict) -> str:
    """Markdown: the groups' share of the profiled steps with their FLOP rates, the reference
    products, and the operators that take the most time."""
    lines = [f"{result['recipe']}'s model, batch {result['batch_size']}, frozen products {result['precision']}; {result['steps']} training steps "
             f"at {result['graphs_per_second']:.0f} graphs/s unprofiled, then {result['steps']} under the profiler "
             f"({result['profiled_self_seconds']:.2f} s of operators' self time). One process.", "",
             "| group | share of the steps' operator time | calls | GFLOP | GFLOP/s |", "|---|---:|---:|---:|---:|"]
    for name, g in result["groups"].items():
        rate = f"{g['gflops']:.0f}" if g["gflops"] else "—"
        flops = f"{g['flops'] / 1e9:.1f}" if g["flops"] else "—"
        lines.append(f"| {name} | {100 * g['share']:.1f}% | {g['calls']:,} | {flops} | {rate} |")
    lines += ["", "| the steps' costliest large product | calls | GFLOP/s in the steps | GFLOP/s alone | in the steps / alone |",
              "|---|---:|---:|---:|---:|"]
    for dtype, r in result["reference"].items():
        m, k, n = r["shape"]
        lines.append(f"| [{m}×{k}] @ [{k}×{n}], {dtype} | {r['calls_in_steps']} | {r['in_steps_gflops']:.0f} | {r['alone_gflops']:.0f} | "
                     f"{r['in_steps_gflops'] / r['alone_gflops']:.2f} |")
    lines += ["", "| operator | share | calls |", "|---|---:|---:|"]
    lines += [f"| `{name}` | {100 * o['share']:.1f}% | {o['calls']:,} |" for name, o in result["top_operators"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
