"""Why a label prior washes routes out, before any training: the spectrum of the normalised task
graph and what its propagation leaves of task embeddings that tell tasks apart.

    python benchmarks/prior_spectrum.py [--data ../shared/data] [--json benchmarks/results/prior_spectrum.json]

For each recipe (Tox21, ToxCast) and prior variant (the recipe's; `prior.top_k` 10; `prior.restart`
0.5; one propagation step; PairNorm), on the recipe's training split:

- the relation cft builds (`cft.prior.sources.build_relation`: phi over co-labelled molecules,
  minimum support and |phi|, optional top-k) and the share of its off-diagonal entries that are
  non-zero;
- the eigenvalues of A_hat = D^-1/2 (A + I) D^-1/2 (`cft.nn.graph.normalized_adjacency`): the
  largest is 1 (the degree vector); along an eigenvector of eigenvalue lambda, k propagation steps
  multiply an embedding by lambda^k, so the second largest, lambda_2, bounds what is left of
  everything but the common direction;
- from 8 draws of random task embeddings E_0 [T, 32] (the router's initialisation), propagated by
  the router itself (`cft.nn.routing.PartRouter.propagated_embeddings`): the scale rms(E~) /
  rms(E_0) (rms(X) = sqrt(mean_t ||X_t||^2)), the relative spread rms(E~ - mean_t E~) / rms(E~)
  (1: nothing in common; 0: every task alike; as benchmarks/prior_embeddings.py) and the mean
  routing entropy of the initial routes over K random adapter keys (the routed studies' K,
  `quality.ROUTED_K`: the recipes' before they took one adapter per layer; ln K when
  uniform). The routing softmax divides by tau sqrt(m) for embeddings of rms sqrt(m): a smaller
  scale flattens the routes as a higher temperature would.

No training and no backbone: the featurised datasets are read from cft's cache (seconds).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from prior_embeddings import relative_spread, rms  # noqa: E402
from quality import ROUTED_K  # noqa: E402

RECIPES = {"tox21": "recipes/tox21.yaml", "toxcast": "recipes/toxcast.yaml"}
# name -> (--set style changes of the recipe's prior section; PartSpec fields of the router)
VARIANTS = {
    "recipe (2 steps)": ({}, {}),
    "top_k 10": ({"top_k": 10}, {}),
    "restart 0.5": ({}, {"prior_restart": 0.5}),
    "1 step": ({}, {"prior_steps": 1}),
    "pairnorm": ({}, {"prior_norm": "pairnorm"}),
}
DRAWS, EMBED_DIM = 8, 32


def describe(name: str, data: Path) -> list[dict]:
    from cft.data.dataset import load_dataset
    from cft.nn.graph import normalized_adjacency
    from cft.nn.routing import PartRouter, routing_entropy
    from cft.prior.sources import build_relation
    from cft.recipe.load import load_recipe
    from cft.spec import PartSpec

    recipe = load_recipe(REPO / RECIPES[name])
    dataset = load_dataset(recipe.data, data, recipe.seed)
    rows = []
    for variant, (prior_changes, router_fields) in VARIANTS.items():
        relation = build_relation(recipe.prior.model_copy(update=prior_changes), dataset)
        a = torch.as_tensor(relation, dtype=torch.float32)
        t = a.size(0)
        eigenvalues = torch.linalg.eigvalsh(normalized_adjacency(a)).flip(0)
        k = ROUTED_K[name]  # routes over one adapter are trivial: the routed recipes' K
        spec = PartSpec(name=name, tasks=list(dataset.tasks), layers=[0], num_adapters=k, rank=1, embed_dim=EMBED_DIM, **router_fields)
        scales, spreads, entropies = [], [], []
        for draw in range(DRAWS):
            torch.manual_seed(draw)
            router = PartRouter(spec, hidden=4, relation=relation)  # random E_0 and keys, as a new model starts
            with torch.no_grad():
                propagated = router.propagated_embeddings()
                scales.append(rms(propagated) / rms(router.task_embed))
                spreads.append(relative_spread(propagated))
                entropies.append(float(routing_entropy(router.routes(propagated)[0])))
        rows.append({
            "dataset": name, "variant": variant, "tasks": t, "nonzero_off_diagonal": float((a - torch.diag(torch.diag(a)) != 0).float().sum() / (t * (t - 1))),
            "lambda_1": float(eigenvalues[0]), "lambda_2": float(eigenvalues[1]), "top_eigenvalues": [round(float(v), 4) for v in eigenvalues[:6]],
            "adapters": k, "scale_init": sum(scales) / DRAWS, "relative_spread_init": sum(spreads) / DRAWS,
            "routing_entropy_init": sum(entropies) / DRAWS, "ln_k": math.log(k),
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| dataset | prior | non-zero off-diagonal | lambda_2 | scale after propagation | relative spread after propagation | initial routing entropy (ln K) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dataset']} ({r['tasks']} tasks, K={r['adapters']}) | {r['variant']} | {r['nonzero_off_diagonal']:.1%} | {r['lambda_2']:.3f} | "
                     f"{r['scale_init']:.3f} | {r['relative_spread_init']:.3f} | {r['routing_entropy_init']:.3f} ({r['ln_k']:.3f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--datasets", default=",".join(RECIPES), help=f"comma-separated subset of {','.join(RECIPES)}")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if not names or any(n not in RECIPES for n in names):
        parser.error(f"--datasets: choose from {', '.join(RECIPES)}")
    torch.set_num_threads(1)
    rows = [row for name in names for row in describe(name, args.data.resolve())]
    print(table(rows))
    if args.json:
        from quality import _code_commit

        from cft.files.atomic import atomic_write_json

        atomic_write_json(args.json, {"code_commit": _code_commit(), "command": "python benchmarks/prior_spectrum.py", "draws": DRAWS,
                                      "embed_dim": EMBED_DIM, "rows": rows})


if __name__ == "__main__":
    main()
