"""`cft prior build|show`, `cft inspect-routing` (also for 600+ tasks) and `cft predict`, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from conftest import TINY_PART_TASKS, assert_user_error, run_cli, run_cli_inprocess

NARROW = {"COLUMNS": "80"}


def _widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


# --------------------------------------------------------------------------- prior


def test_prior_build_from_data_writes_matrix_names_and_png(tiny_parts, tmp_path):
    out = tmp_path / "rel.npy"
    result = run_cli("prior", "build", "--data", tiny_parts["recipe"], "-o", out, "--min-support", "5", "--png", tmp_path / "rel.png", env=NARROW)
    assert result.returncode == 0, result.stderr
    with open(out, "rb") as fh:
        matrix = np.load(fh, allow_pickle=False)
    names = json.loads((tmp_path / "rel.tasks.json").read_text())
    assert matrix.shape == (8, 8) and len(names) == 8 and np.allclose(matrix, matrix.T) and (matrix >= 0).all()
    assert "8 tasks" in result.stdout and "training molecules" in result.stdout
    assert (tmp_path / "rel.png").stat().st_size > 5_000
    assert _widest(result.stdout) <= 80
    # jaccard with --top-k 1: fewer links than without (at most T*k), still symmetric
    dense = run_cli_inprocess("prior", "build", "--data", tiny_parts["recipe"], "-o", tmp_path / "jac_all.csv", "--method", "jaccard", "--min-support", "5")
    sparse = run_cli_inprocess("prior", "build", "--data", tiny_parts["recipe"], "-o", tmp_path / "jac.csv", "--method", "jaccard", "--top-k", "1", "--min-support", "5")
    assert dense.returncode == 0 and sparse.returncode == 0, dense.stderr + sparse.stderr
    frame = pd.read_csv(tmp_path / "jac.csv", index_col=0)
    assert list(frame.columns) == list(frame.index) == names
    links = {name: int(((m := pd.read_csv(tmp_path / name, index_col=0).to_numpy()) > 0).sum() - (np.diag(m) > 0).sum()) // 2
             for name in ("jac_all.csv", "jac.csv")}
    assert links["jac.csv"] < links["jac_all.csv"], f"--top-k 1 should drop links: {links}"
    assert links["jac.csv"] <= len(names) * 1, f"top-1 keeps at most T undirected links: {links}"
    assert np.allclose(frame.to_numpy(), frame.to_numpy().T)
    # --tasks selects label columns (globs), --min-value drops weak edges; --max-rows clusters the display
    some = run_cli_inprocess("prior", "build", "--data", tiny_parts["recipe"], "-o", tmp_path / "some.npy", "--tasks", names[0],
                             "--tasks", names[1], "--min-value", "0.99", "--min-support", "5")
    assert some.returncode == 0, some.stderr
    assert json.loads((tmp_path / "some.tasks.json").read_text()) == names[:2]
    with open(tmp_path / "some.npy", "rb") as fh:
        weak = np.load(fh, allow_pickle=False)
    assert weak.shape == (2, 2) and ((weak == 0) | (weak >= 0.99)).all()
    shown = run_cli_inprocess("prior", "show", out, "--max-rows", "3")
    assert shown.returncode == 0 and "clusters" in shown.stdout, shown.stdout
    assert_user_error(run_cli_inprocess("prior", "build", "--data", tiny_parts["recipe"], "-o", tmp_path / "x.npy", "--min-value", "-1"), "--min-value")


def test_prior_build_over_bundles_in_bundle_order_and_show(tiny_parts, tmp_path):
    out = tmp_path / "rel.csv"
    result = run_cli_inprocess("prior", "build", "--bundles", tiny_parts["B"], tiny_parts["A"], "-o", out, "--min-support", "5")
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out, index_col=0)
    assert list(frame.columns) == TINY_PART_TASKS[1] + TINY_PART_TASKS[0], "bundle order"
    shown = run_cli("prior", "show", out, "--png", tmp_path / "show.png", env=NARROW)
    assert shown.returncode == 0, shown.stderr
    assert "ester" in shown.stdout and _widest(shown.stdout) <= 80
    assert (tmp_path / "show.png").exists()
    # a run folder and a bundle show their own prior
    run = run_cli_inprocess("prior", "show", tiny_parts["A"].parent)
    assert run.returncode == 0 and "halogen_any" in run.stdout
    assert_user_error(run_cli_inprocess("prior", "build", "-o", tmp_path / "x.npy"), "--data", "--bundles")
    assert_user_error(run_cli_inprocess("prior", "build", "--data", tiny_parts["recipe"], "--method", "pearson", "-o", tmp_path / "x.npy"), "phi, jaccard, cosine")
    assert_user_error(run_cli_inprocess("prior", "show", tmp_path / "missing.npy"), "does not exist")
    assert not (tmp_path / "x.npy").exists()


# --------------------------------------------------------------------------- inspect-routing


def test_inspect_routing_of_a_run_folder_adds_the_epoch_history(tiny_parts, tmp_path):
    run = tiny_parts["A"].parent
    result = run_cli_inprocess("inspect-routing", run, "--layer", "1", "--png", tmp_path / "r.png", "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert "layer 1" in result.stdout and "layer 0" not in result.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert list(data["layers"]) == ["1"] and len(data["history"]) == 2
    assert len(data["layers"]["1"]["entropy"]) == 4
    routes = np.array(data["layers"]["1"]["routes"])
    chosen = len(set(routes.argmax(axis=1).tolist()))
    assert data["layers"]["1"]["chosen"] == chosen and f"{chosen} of {routes.shape[1]} adapters" in " ".join(result.stdout.split())
    assert_user_error(run_cli_inprocess("inspect-routing", run, "--layer", "7"), "layers 0, 1")


def _synthetic_bundle(path, tasks: int, adapters: int):
    """A bundle with many tasks (ToxCast has 617) and random routes, written without training."""
    import torch

    from cft.files.bundle import save_bundle
    from cft.nn.backbone import Backbone
    from cft.nn.model import CftModel
    from cft.spec import BackboneSpec, ModelSpec, PartSpec

    torch.manual_seed(0)
    names = [f"TOX_assay_{i:03d}" for i in range(tasks)]
    bb = BackboneSpec(num_layers=2, hidden=16, dropout=0.0)
    part = PartSpec(name="toxcast", tasks=names, layers=[0, 1], num_adapters=adapters, rank=2, embed_dim=8, temperature=0.3, threshold=0.05)
    spec = ModelSpec(backbone=bb, tasks=names, kinds=["binary"] * tasks, parts=[part])
    model = CftModel(Backbone(bb), spec, [np.eye(tasks, dtype=np.float32)])
    save_bundle(path, model, data={}, metrics={}, provenance={"kind": "trained"})
    return names


def test_inspect_routing_stays_readable_for_600_tasks(tmp_path):
    bundle = tmp_path / "toxcast.safetensors"
    names = _synthetic_bundle(bundle, 620, 24)
    result = run_cli("inspect-routing", bundle, "--json", tmp_path / "r.json", "--png", tmp_path / "r.png", env=NARROW)
    assert result.returncode == 0, result.stderr
    assert "620 tasks do not fit as rows" in result.stdout and "clusters" in result.stdout
    assert "columns do not fit" in result.stdout, "24 adapters are summarised at 80 columns, and it says so"
    assert _widest(result.stdout) <= 80
    assert len(result.stdout.splitlines()) < 2 * 70, "two layers of at most 40 rows each, not 620"
    data = json.loads((tmp_path / "r.json").read_text())
    members = sorted(t for cluster in data["clusters"] for t in cluster)
    assert members == sorted(names) and len(data["clusters"]) <= 40
    assert len(data["layers"]["0"]["routes"]) == 620
    assert (tmp_path / "r.png").stat().st_size > 10_000
    prior = tmp_path / "big.npy"
    rng = np.random.default_rng(0)
    a = rng.random((620, 620)) * (rng.random((620, 620)) < 0.02)
    with open(prior, "wb") as fh:
        np.save(fh, np.maximum(a, a.T), allow_pickle=False)
    shown = run_cli("prior", "show", prior, "--png", tmp_path / "big.png", env=NARROW)
    assert shown.returncode == 0, shown.stderr
    assert "clusters" in shown.stdout and _widest(shown.stdout) <= 80 and len(shown.stdout.splitlines()) < 70


# --------------------------------------------------------------------------- predict


def test_predict_scores_every_task_and_flags_unparsable_smiles(tiny_parts, tmp_path):
    out = tmp_path / "scores.csv"
    result = run_cli("predict", tiny_parts["A"].parent, "--input", tiny_parts["smiles"], "-o", out)
    assert result.returncode == 0, result.stderr
    assert "1 SMILES could not be parsed" in result.stdout and "rows 3" in result.stdout
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["smiles", "id", *TINY_PART_TASKS[0], "invalid_smiles"]
    assert frame["invalid_smiles"].tolist() == [0, 0, 1, 0, 0, 0]
    scores = frame[TINY_PART_TASKS[0]].to_numpy()
    assert np.isnan(scores[2]).all() and ((scores[[0, 1, 3, 4, 5]] > 0) & (scores[[0, 1, 3, 4, 5]] < 1)).all(), "probabilities"
    other = tmp_path / "named.csv"
    other.write_text("id,structure\n1,CCO\n2,C1CC\n")
    named = run_cli_inprocess("predict", tiny_parts["A"], "--input", other, "--smiles-column", "structure", "-o", tmp_path / "n.csv")
    assert named.returncode == 0 and "1 SMILES could not be parsed" in named.stdout
    assert_user_error(run_cli("predict", tiny_parts["A"], "--input", other, "--smiles-column", "smi", "-o", tmp_path / "x.csv"), "no SMILES column 'smi'")
    assert_user_error(run_cli_inprocess("predict", tiny_parts["A"], "--input", tmp_path / "none.csv", "-o", tmp_path / "x.csv"), "does not exist")
    assert not (tmp_path / "x.csv").exists()


def test_predict_keeps_the_input_columns_or_the_chosen_ones(tiny_parts, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,smiles,note,has_Cl\n007,CCCl,a,1\n008,C1CC,\"b, c\",0\n009,c1ccccc1O,d,\n")
    out = tmp_path / "scores.csv"
    result = run_cli("predict", tiny_parts["A"], "--input", source, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "input column(s) has_Cl replaced by the scores of the same name" in " ".join(result.stdout.split())
    frame = pd.read_csv(out, dtype={"id": str, "note": str}, keep_default_na=False)
    assert list(frame.columns) == ["id", "smiles", "note", *TINY_PART_TASKS[0], "invalid_smiles"]
    assert frame["id"].tolist() == ["007", "008", "009"], "an ID column comes back unchanged (leading zeros too)"
    assert frame["note"].tolist() == ["a", "b, c", "d"]
    assert frame["invalid_smiles"].tolist() == [0, 1, 0] and frame["has_Cl"].iloc[1] == ""
    chosen = run_cli_inprocess("predict", tiny_parts["A"], "--input", source, "--keep-columns", "id", "-o", tmp_path / "chosen.csv")
    assert chosen.returncode == 0, chosen.stderr
    assert list(pd.read_csv(tmp_path / "chosen.csv").columns) == ["smiles", "id", *TINY_PART_TASKS[0], "invalid_smiles"]
    # a bad choice is refused before anything is written; an existing output stays as it was
    before = out.read_bytes()
    refused = run_cli_inprocess("predict", tiny_parts["A"], "--input", source, "--keep-columns", "id,name", "-o", out)
    assert_user_error(refused, "--keep-columns names 'name'", "its columns are: id, smiles, note, has_Cl")
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left"
