"""A recipe's model, optimiser and training batches built in one process, and timed training
steps on them: what the in-process side-by-side benchmarks (readout_k1.py, narrow_banks.py) share.

The backbone is randomly initialised (a step's cost does not depend on its weights); no run
folder, checkpoint or validation: only forward, loss, backward and the optimiser's step.
`alternating_rounds` times two settings of the code against each other in one process,
`switched_rounds` two settings that a switch function flips, `OperatorCount` counts what a
step dispatches, `counted_step` takes one step's values and counts, and `compare_switched` is the
whole of a benchmark that sets two settings of the code side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cft.data.dataset import load_dataset
from cft.files.atomic import atomic_write_json
from cft.nn.backbone import Backbone
from cft.nn.frozen import bf16_frozen_products
from cft.recipe.load import load_recipe
from cft.recipe.schema import TrainConfig
from cft.spec import BackboneSpec
from cft.training.build import build_training_model, set_trainable
from cft.training.inference import frozen_bf16_wanted
from cft.training.optim import make_optimizer
from cft.training.prefix import StoreBatches
from cft.training.trainer import batch_loss

BENCHMARKS = Path(__file__).resolve().parent


def benchmark_parser(doc: str, json_name: str, rounds: int, steps: int, threads: int) -> argparse.ArgumentParser:
    """The options every in-process side-by-side benchmark takes: --data, --rounds, --steps,
    --threads and --json (default benchmarks/results/`json_name`), with these defaults."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=BENCHMARKS.parents[1] / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--json", type=Path, default=BENCHMARKS / "results" / json_name)
    return parser


def recipe_benchmark(doc: str, script: str, json_name: str, rounds: int = 9, steps: int = 30, threads: int = 2):
    """What an in-process benchmark of one recipe's training steps starts with: `benchmark_parser`'s
    options plus --recipe (default recipes/tox21.yaml) and --batch-size (default: the recipe's),
    parsed; torch's threads set; the recipe's model, optimiser and batches (`training_setup`).
    Returns (args, model, optimizer, batches, result), `result` holding the machine, the recipe,
    the batch size, the steps and the command (`python benchmarks/<script> ...`)."""
    parser = benchmark_parser(doc, json_name, rounds=rounds, steps=steps, threads=threads)
    parser.add_argument("--recipe", default="recipes/tox21.yaml")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from provenance import machine

    model, optimizer, batches = training_setup(BENCHMARKS.parent / args.recipe, args.data.resolve(), args.steps, args.batch_size)
    command = (f"python benchmarks/{script} --recipe {args.recipe} --rounds {args.rounds} --steps {args.steps}"
               + (f" --batch-size {args.batch_size}" if args.batch_size else "") + f" --threads {args.threads}")
    result = {"machine": machine() | {"torch_threads": args.threads}, "recipe": args.recipe, "batch_size": len(batches[0].y), "steps": args.steps,
              "command": command}
    return args, model, optimizer, batches, result


def training_setup(recipe_path: Path, data: Path, steps: int, batch_size: int | None = None, overrides: list[str] | None = None):
    """(model in training mode, its optimiser, `steps` training batches of `batch_size`, default
    the recipe's) for the recipe at `recipe_path` with `overrides` (`--set` items)."""
    recipe = load_recipe(recipe_path, overrides or [])
    dataset = load_dataset(recipe.data, data, recipe.seed)
    model, _ = build_training_model(recipe, dataset, Backbone(BackboneSpec.of(recipe.backbone)))
    set_trainable(model, recipe)
    optimizer = make_optimizer(model, recipe)
    size = batch_size or recipe.train.batch_size
    batches = list(StoreBatches(dataset.store, dataset.y, dataset.split["train"][: size * steps], size))  # IndexError ends it
    return model.train(), optimizer, batches


def graphs_per_second(model, optimizer, batches, train: TrainConfig | None = None) -> float:
    """Training steps (forward, task loss, backward, optimiser step) over `batches` on the CPU:
    graphs per second. `train`: the recipe's training settings; the steps then minimise its loss
    and run its frozen products' precision as `cft train` does (`cft.training.trainer.batch_loss`:
    the task loss plus the routes' regulariser and terms; `train.frozen_bf16` as this CPU resolves
    it). None: the task loss alone, at the precision of the caller's `bf16_frozen_products` block
    (fp32 outside one)."""
    if train is None:
        return _timed_steps(model, optimizer, batches, None)
    with bf16_frozen_products(frozen_bf16_wanted(train.frozen_bf16, torch.device("cpu"))):
        return _timed_steps(model, optimizer, batches, train)


def _timed_steps(model, optimizer, batches, train: TrainConfig | None) -> float:
    graphs = 0
    start = time.perf_counter()
    for batch in batches:
        if train is None:
            loss = model.task_loss(model(batch), batch.y)
        else:
            logits, routes = model(batch, with_routes=True)
            loss = batch_loss(model, logits, routes, batch.y, train)[2]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        graphs += int(batch.num_graphs)
    return graphs / (time.perf_counter() - start)


def inference_graphs_per_second(model, batches) -> float:
    """Forward passes in eval mode without gradients over `batches`: graphs per second (the model
    is left in training mode)."""
    model.eval()
    graphs = 0
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            model(batch)
            graphs += int(batch.num_graphs)
    seconds = time.perf_counter() - start
    model.train()
    return graphs / seconds


def alternating_rounds(settings: dict[str, Callable[[], float]], rounds: int, ratio: tuple[str, str]) -> list[dict]:
    """Each round calls every setting's timing (graphs/s), in alternating order from round to
    round (the first setting first in even rounds, last in odd ones), and records the pair with
    ratio[0] / ratio[1] as "ratio"; prints each round. Returns the rounds."""
    out = []
    for r in range(rounds):
        order = list(settings.items()) if r % 2 == 0 else list(reversed(settings.items()))
        pair = {name: timing() for name, timing in order}
        pair["ratio"] = pair[ratio[0]] / pair[ratio[1]]
        out.append(pair)
        print(f"round {r + 1}: " + ", ".join(f"{name} {pair[name]:.0f} graphs/s" for name in settings) + f", ratio {pair['ratio']:.3f}", flush=True)
    return out


def switched_rounds(runs: dict[str, Callable[[], float]], switch: Callable[[bool], None], names: tuple[str, str], rounds: int) -> dict[str, dict]:
    """Two settings of the code, `switch(True)` (names[0], the code as shipped) and `switch(False)`
    (names[1]), timed against each other per run (name -> a timing in graphs/s, e.g. "training"
    and "inference"): both warmed up once, then `alternating_rounds`. The code is switched back on
    after every timing. Returns run name -> {"rounds", "median_ratio", "median_graphs_per_second"}."""

    def timed(run, on: bool) -> float:
        switch(on)
        try:
            return run()
        finally:
            switch(True)

    out = {}
    for what, run in runs.items():
        for on in (True, False):  # warm-up of both settings
            timed(run, on)
        print(what, flush=True)
        timings = {name: (lambda on=on, run=run: timed(run, on)) for name, on in zip(names, (True, False))}
        result = alternating_rounds(timings, rounds, names)
        out[what] = {"rounds": result} | round_summary(result, names)
        print(f"{what}: median ratio {names[0]} / {names[1]} {out[what]['median_ratio']:.3f}", flush=True)
    return out


def compare_switched(doc: str, script: str, json_name: str, switch: Callable[[bool], None], names: tuple[str, str],
                     compare: Callable[[tuple, tuple], dict]) -> None:
    """An in-process benchmark of two settings of the code, `switch(True)` (names[0], as shipped)
    and `switch(False)` (names[1]), on `recipe_benchmark`'s model with its up-projections set to
    small random values (zero, as initialised, would hide any difference of values): each
    setting's `counted_step` on the first batch, `compare((logits, gradients), (logits,
    gradients))` of the two (a dict of how far their values differ, into the result), then
    `switched_rounds` of training steps and inference passes; written to --json."""
    args, model, optimizer, batches, result = recipe_benchmark(doc, script, json_name)
    train = load_recipe(BENCHMARKS.parent / args.recipe).train
    with torch.no_grad():  # up-projections away from their zero start, as after some training
        for name, p in model.named_parameters():
            if p.requires_grad and name.endswith(".V"):
                p.normal_(0.0, 0.02)
    steps = []
    for on in (True, False):
        switch(on)
        try:
            steps.append(counted_step(model, batches[0], train))
        finally:
            switch(True)
    result["operators"] = {name: step[2] for name, step in zip(names, steps)}
    result |= compare(steps[0][:2], steps[1][:2])
    print(f"operators: {result['operators']}; " + ", ".join(f"{k}: {v}" for k, v in result.items() if k.startswith(("logits", "gradients"))), flush=True)
    runs = {"training": lambda: graphs_per_second(model, optimizer, batches, train), "inference": lambda: inference_graphs_per_second(model, batches)}
    result |= switched_rounds(runs, switch, names, args.rounds)
    atomic_write_json(args.json, result)


def counted_step(model, batch, train: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """(logits, gradients, operator counts) of one training forward and backward of `batch` at the
    recipe's frozen products' precision on this CPU, after one uncounted forward (which computes the
    constants a frozen backbone keeps), and the count of one eval-mode pass without gradients:
    what two settings of the code are compared by (values within rounding, operators dispatched)."""
    with bf16_frozen_products(frozen_bf16_wanted(train.frozen_bf16, torch.device("cpu"))):
        model(batch)
        model.zero_grad(set_to_none=True)
        with OperatorCount() as forward:
            logits, routes = model(batch, with_routes=True)
            loss = batch_loss(model, logits, routes, batch.y, train)[2]
        with OperatorCount() as backward:
            loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), OperatorCount() as inference:
        model(batch)
    model.train()
    return logits.detach(), gradients, {"training_forward": forward.count, "training_backward": backward.count, "inference": inference.count}


class OperatorCount(TorchDispatchMode):
    """Counts the ATen operators dispatched inside it (below autograd: what a step asks of torch)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def round_summary(rounds: list[dict], names) -> dict:
    """The median of the per-round ratios and each setting's median graphs/s."""
    return {"median_ratio": statistics.median(p["ratio"] for p in rounds),
            "median_graphs_per_second": {name: statistics.median(p[name] for p in rounds) for name in names}}


def rounds_markdown(rounds: list[dict], names, medians: dict[str, float], ratio_header: str, ratios: dict[str, dict], digits: int = 2) -> list[str]:
    """Markdown lines of an `alternating_rounds` result: a table of every round's graphs/s per
    setting (`names`) with their `medians` as its last row, then a table of `ratios` (name ->
    {"median", "min", "max"}) under the column header `ratio_header`, to `digits` decimals."""
    lines = ["| round | " + " | ".join(f"{n} graphs/s" for n in names) + " |", "|---:|" + "---:|" * len(names)]
    for i, r in enumerate(rounds, 1):
        lines.append(f"| {i} | " + " | ".join(f"{r[n]:.0f}" for n in names) + " |")
    lines.append("| median | " + " | ".join(f"{medians[n]:.0f}" for n in names) + " |")
    lines += ["", f"| {ratio_header} | median of the per-round ratios | min-max |", "|---|---:|---:|"]
    for name, r in ratios.items():
        lines.append(f"| {name} | {r['median']:.{digits}f}× | {r['min']:.{digits}f}-{r['max']:.{digits}f} |")
    return lines
