"""The frozen backbone's products in fp32, with only their input gradients in bf16, and with both
products in bf16 (`train.frozen_bf16`: false, backward, true): training steps of a recipe's model
(by default recipes/tox21.yaml) side by side in one process.

    python benchmarks/frozen_precision.py [--recipe recipes/tox21.yaml] [--rounds 9] [--steps 30]
                                          [--batch-size N] [--threads 2] [--json benchmarks/results/frozen_precision.json]

One model, one optimiser, the same batches: each round times `--steps` training steps (forward,
loss, backward, AdamW) inside `bf16_frozen_products(setting)` for every setting, the order
reversed from round to round, so that a load on the machine falls on all of them alike. The
medians of the per-round ratios to fp32 are reported, with every round. Processes timed one after
another (benchmarks/speed.py) differ by 10-15% on a shared machine; within one process the ratio
of two settings is steadier. bf16 products pay on a CPU with native bf16 (AVX512-BF16, AMX) or a
GPU; elsewhere they are emulated and slower. The backbone is randomly initialised (a step's cost
does not depend on its weights).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from training_steps import alternating_rounds, graphs_per_second, recipe_benchmark, rounds_markdown  # noqa: E402

from cft.files.atomic import atomic_write_json  # noqa: E402
from cft.nn.frozen import BACKWARD, bf16_frozen_products  # noqa: E402
from cft.training.inference import cpu_computes_bf16  # noqa: E402

SETTINGS = {"fp32": False, "input gradients bf16": BACKWARD, "both products bf16": True}


def timed(model, optimizer, batches, setting) -> float:
    with bf16_frozen_products(setting):
        return graphs_per_second(model, optimizer, batches)


def ratios_to_fp32(rounds: list[dict]) -> dict[str, dict]:
    """Per setting: the median of its per-round ratio to fp32, and the smallest and largest."""
    out = {}
    for name in SETTINGS:
        if name == "fp32":
            continue
        per_round = [r[name] / r["fp32"] for r in rounds]
        out[name] = {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}
    return out


def main() -> None:
    args, model, optimizer, batches, result = recipe_benchmark(__doc__, "frozen_precision.py", "frozen_precision.json")
    result["native_bf16"] = cpu_computes_bf16()
    timings = {name: (lambda setting=setting: timed(model, optimizer, batches, setting)) for name, setting in SETTINGS.items()}
    for timing in timings.values():  # warm-up: the allocator, and oneDNN's bf16 kernels for these shapes
        timing()
    rounds = alternating_rounds(timings, args.rounds, ("input gradients bf16", "fp32"))
    result["rounds"] = rounds
    result["median_graphs_per_second"] = {name: statistics.median(r[name] for r in rounds) for name in SETTINGS}
    result["ratio_to_fp32"] = ratios_to_fp32(rounds)
    print(", ".join(f"{name} / fp32: {r['median']:.3f}" for name, r in result["ratio_to_fp32"].items()), flush=True)
    atomic_write_json(args.json, result)


def table(result: dict) -> str:
    """Markdown: every round's graphs/s per setting, the medians and the ratios to fp32."""
    lines = [f"{result['recipe']}'s model, batch {result['batch_size']}, {result['steps']} training steps per setting and round, "
             f"{len(result['rounds'])} rounds in alternating order, one process ({'native' if result['native_bf16'] else 'emulated'} bf16 products).", ""]
    lines += rounds_markdown(result["rounds"], list(SETTINGS), result["median_graphs_per_second"], "setting / fp32", result["ratio_to_fp32"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
