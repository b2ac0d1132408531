"""`cft compose` through the real CLI (tiny settings): the NR/SR flow of the issue on the builtin
tasks, exactness of route mode, calibration, merge modes and every refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_PART_TASKS, assert_user_error, run_cli, run_cli_inprocess

A_TASKS, B_TASKS = TINY_PART_TASKS


@pytest.fixture(scope="module")
def parts(tiny_parts):
    return tiny_parts


def _header(path) -> dict:
    from cft.files.stfile import read_header

    return read_header(path, "bundle")


def _predict(bundle, smiles, out, runner=run_cli_inprocess):
    result = runner("predict", bundle, "--input", smiles, "-o", out)
    assert result.returncode == 0, result.stderr
    import pandas as pd

    return pd.read_csv(out)


def _eval(bundle, out, runner=run_cli_inprocess):
    result = runner("eval", bundle, "--split", "test", "--json", out)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())["per_task"]


def test_route_mode_without_propagation_reproduces_each_part_exactly(parts, tmp_path):
    ab = tmp_path / "AB0.safetensors"
    result = run_cli_inprocess("compose", parts["A"], parts["B"], "--prior-from", parts["recipe"], "--compose-steps", "0", "-o", ab)
    assert result.returncode == 0, result.stderr
    got = _predict(ab, parts["smiles"], tmp_path / "ab.csv", runner=run_cli)
    pa = _predict(parts["A"], parts["smiles"], tmp_path / "a.csv")
    pb = _predict(parts["B"], parts["smiles"], tmp_path / "b.csv")
    assert list(got.columns) == ["smiles", "id", *A_TASKS, *B_TASKS, "invalid_smiles"]  # the input's id column is kept
    for frame, tasks in ((pa, A_TASKS), (pb, B_TASKS)):
        for t in tasks:
            assert np.allclose(got[t].to_numpy(), frame[t].to_numpy(), atol=2e-6, equal_nan=True), t
    header = _header(ab)
    assert header["spec"]["scale"] == 1.0 and header["spec"]["compose_steps"] == 0
    assert [p["rank"] for p in header["spec"]["parts"]] == [4, 2], "each part keeps its rank inside the rank-4 bank"


def test_the_nr_sr_flow_with_a_prior_from_data(parts, tmp_path):
    """The issue's must-show flow at tiny settings: compose two parts with a prior from the data,
    each part's tasks score (almost) as the part alone, calibration, inspection."""
    ab = tmp_path / "AB.safetensors"
    result = run_cli("compose", parts["A"], parts["B"], "--prior-from", parts["recipe"], "-o", ab)
    assert result.returncode == 0, result.stderr
    assert "cross-bundle route mass" in result.stdout
    header = _header(ab)
    prov = header["provenance"]
    from cft.files.paths import sha256_file

    assert prov["kind"] == "composed" and prov["mode"] == "route" and prov["prior"]["source"] == "labels"
    assert prov["compose_rule"] == "residual" and prov["compose_steps"] == 1
    assert [s["sha256"] for s in prov["sources"]] == [sha256_file(parts["A"]), sha256_file(parts["B"])]
    assert header["spec"]["tasks"] == A_TASKS + B_TASKS
    assert header["data"]["config"]["tasks"] == A_TASKS + B_TASKS, "cft eval finds the parts' common data"
    # without calibration the parts' tasks score as the parts alone (the tiny models' margin is the 0.005)
    composed = _eval(ab, tmp_path / "ab.json", runner=run_cli)
    alone = {**_eval(parts["A"], tmp_path / "a.json"), **_eval(parts["B"], tmp_path / "b.json")}
    for task, value in alone.items():
        if value is not None:
            assert abs(composed[task] - value) <= 0.005, (task, composed[task], value)
    # the routing shows both groups and what crosses between them
    shown = run_cli("inspect-routing", ab, "--png", tmp_path / "routing.png", "--json", tmp_path / "routing.json", env={"COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    assert "route mass by bundle" in shown.stdout and "A tasks ->" in shown.stdout and "B tasks ->" in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80, "readable at 80 columns"
    assert (tmp_path / "routing.png").stat().st_size > 10_000
    routes = json.loads((tmp_path / "routing.json").read_text())
    assert [p["name"] for p in routes["parts"]] == ["A", "B"]
    layer0 = routes["layers"]["0"]
    assert np.array(layer0["routes"]).shape == (8, 6) and np.allclose(np.array(layer0["routes"]).sum(axis=1), 1.0, atol=1e-5)
    # calibration: only routing and task embeddings move, for a bounded number of steps
    cal = tmp_path / "ABcal.safetensors"
    calibrated = run_cli("compose", parts["A"], parts["B"], "--prior-from", parts["recipe"], "-o", cal,
                         "--calibrate", parts["recipe"], "--set", "train.max_steps=4", "--set", "train.epochs=1")
    assert calibrated.returncode == 0, calibrated.stderr
    cal_header = _header(cal)
    assert cal_header["provenance"]["calibration"]["steps"] == 4
    from safetensors.torch import load_file

    before, after = load_file(str(ab)), load_file(str(cal))
    assert set(before) == set(after)
    for key in before:
        if not key.startswith("router.parts.") or key.endswith(".relation"):
            assert torch.equal(before[key], after[key]), f"{key} changed in calibration"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("task_embed"))
    assert run_cli_inprocess("eval", cal).returncode == 0


def test_composed_bundles_compose_again_and_renames_resolve_duplicates(parts, tmp_path):
    ab = tmp_path / "AB.safetensors"
    assert run_cli_inprocess("compose", parts["A"], parts["B"], "-o", ab).returncode == 0
    dup = run_cli_inprocess("compose", ab, parts["A"], "-o", tmp_path / "dup.safetensors")
    assert_user_error(dup, "halogen_any", "--rename 2:halogen_any=")
    assert not (tmp_path / "dup.safetensors").exists()
    renames = [x for t in A_TASKS for x in ("--rename", f"{t}={t}_again")]
    again = run_cli_inprocess("compose", ab, parts["A"], "-o", tmp_path / "ABA.safetensors", *renames)
    assert again.returncode == 0, again.stderr
    assert "block-diagonal" in again.stderr, "no prior given: said in a warning"
    header = _header(tmp_path / "ABA.safetensors")
    assert [p["name"] for p in header["spec"]["parts"]] == ["A", "B", "A#2"], "a composed source is flattened into its parts"
    assert header["spec"]["tasks"][-4:] == [f"{t}_again" for t in A_TASKS]


def test_merge_modes(parts, tmp_path):
    cat = tmp_path / "cat.safetensors"
    result = run_cli_inprocess("compose", parts["A"], parts["B"], "--mode", "cat", "--weights", "1,0.5", "-o", cat)
    assert result.returncode == 0, result.stderr
    header = _header(cat)
    assert len(header["spec"]["parts"]) == 1 and header["spec"]["parts"][0]["num_adapters"] == 1
    assert header["provenance"]["mode"] == "cat" and header["provenance"]["weights"] == [1.0, 0.5]
    assert run_cli_inprocess("eval", cat).returncode == 0
    shown = run_cli_inprocess("inspect-routing", cat)
    assert shown.returncode == 0 and "uniform" in shown.stdout
    assert_user_error(run_cli_inprocess("compose", parts["A"], parts["B"], "--mode", "linear", "-o", tmp_path / "l.safetensors"), "one rank", "[2, 4]")
    assert_user_error(run_cli_inprocess("compose", parts["A"], parts["B"], "--mode", "svd", "-o", tmp_path / "s.safetensors"), "identity", "gelu")
    assert_user_error(run_cli_inprocess("compose", parts["A"], parts["B"], "--mode", "cat", "--weights", "1", "-o", tmp_path / "w.safetensors"), "one per bundle")
    assert not any((tmp_path / n).exists() for n in ("l.safetensors", "s.safetensors", "w.safetensors"))


# --------------------------------------------------------------------------- refusals


def _save_npy(path, array, **kw):
    with open(path, "wb") as fh:
        np.save(fh, array, **kw)
    return path


def test_refuses_bundles_from_different_backbones(parts, tmp_path):
    from safetensors.torch import load_file

    from cft.files.stfile import write_safetensors

    header = _header(parts["B"])
    real = header["backbone_fingerprint"]
    header["backbone_fingerprint"] = "0" * 32
    other = tmp_path / "other.safetensors"
    write_safetensors(other, load_file(str(parts["B"])), header)
    result = run_cli_inprocess("compose", parts["A"], other, "-o", tmp_path / "x.safetensors")
    assert_user_error(result, real, "0" * 32, "same frozen backbone")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    "case,fragments",
    [
        ("shape", ["3x3", "8 tasks"]),
        ("nan", ["NaN or inf"]),
        ("inf", ["NaN or inf"]),
        ("negative", ["negative"]),
        ("asymmetric", ["not symmetric"]),
        ("pickled", ["pickled", "refuses to unpickle"]),
        ("missing", ["does not exist"]),
        ("corrupt", ["not a valid .npy"]),
        ("csv_names", ["task names do not match", "unexpected"]),
    ],
)
def test_refuses_bad_priors(parts, tmp_path, case, fragments):
    eight = np.eye(8, dtype=np.float32)
    prior = tmp_path / "rel.npy"
    if case == "shape":
        _save_npy(prior, np.eye(3))
    elif case in ("nan", "inf", "negative", "asymmetric"):
        bad = eight.copy()
        bad[0, 1] = {"nan": np.nan, "inf": np.inf, "negative": -0.5, "asymmetric": 0.5}[case]
        if case != "asymmetric":
            bad[1, 0] = bad[0, 1]
        _save_npy(prior, bad)
    elif case == "pickled":
        _save_npy(prior, np.array([{"evil": 1}, None], dtype=object), allow_pickle=True)
    elif case == "missing":
        prior = tmp_path / "nowhere.npy"
    elif case == "corrupt":
        prior.write_bytes(b"\x93NUMPY garbage")
    elif case == "csv_names":
        import pandas as pd

        prior = tmp_path / "rel.csv"
        names = A_TASKS + B_TASKS[:-1] + ["something_else"]
        pd.DataFrame(eight, index=names, columns=names).to_csv(prior)
    out = tmp_path / "out.safetensors"
    runner = run_cli if case == "pickled" else run_cli_inprocess  # one through a real process, the rest in process
    assert_user_error(runner("compose", parts["A"], parts["B"], "--prior", prior, "-o", out), *fragments)
    assert not out.exists(), "nothing is written on refusal"


def test_a_prior_from_a_csv_whose_header_repeats_a_task_is_refused(parts, tmp_path):
    """--prior-from reads the header as training does: a repeated name is named, not renamed away."""
    data = tmp_path / "labels.csv"
    header = ["smiles", *A_TASKS, *B_TASKS, B_TASKS[0]]
    data.write_text(",".join(header) + "\n" + "\n".join(f"{s}," + ",".join("1" for _ in header[1:]) for s in ("CCO", "CCN")) + "\n")
    out = tmp_path / "out.safetensors"
    assert_user_error(run_cli_inprocess("compose", parts["A"], parts["B"], "--prior-from", data, "-o", out),
                      "repeats 1 column name", repr(B_TASKS[0]))
    assert not out.exists()


def test_refuses_missing_and_corrupt_bundles(parts, tmp_path):
    out = tmp_path / "out.safetensors"
    assert_user_error(run_cli("compose", parts["A"], tmp_path / "nope.safetensors", "-o", out), "does not exist")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(parts["B"].read_bytes()[:1000])
    assert_user_error(run_cli_inprocess("compose", parts["A"], broken, "-o", out), "broken.safetensors")
    assert_user_error(run_cli_inprocess("compose", parts["A"], parts["B"], "--prior", tmp_path / "p.npy", "--prior-from", parts["recipe"], "-o", out), "not both")
    assert_user_error(run_cli_inprocess("compose", parts["A"], parts["B"], "--weights", "1,1", "-o", out), "merge modes")
    assert_user_error(run_cli_inprocess("compose", parts["A"], parts["B"], "--compose-mix", "2", "-o", out), "[0, 1]")
    assert not out.exists()


def test_a_recipe_can_start_from_a_composed_bundle(parts, tmp_path):
    """`cft train` with train.init_bundle + trainable: routing calibrates on the bundle's own backbone."""
    ab = tmp_path / "AB.safetensors"
    assert run_cli_inprocess("compose", parts["A"], parts["B"], "-o", ab).returncode == 0
    calib = ["--set", f"train.init_bundle={ab}", "--set", "train.trainable=routing", "--set", "train.max_steps=3",
             "--set", "train.epochs=1", "--set", f"data.tasks={json.dumps(A_TASKS + B_TASKS)}"]
    result = run_cli("train", parts["recipe"], "-o", tmp_path / "cal", *calib)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "cal" / "summary.json").read_text())
    assert summary["backbone"]["path"] == str(parts["A"].parent / "backbone.safetensors")
    assert summary["tasks"] == A_TASKS + B_TASKS
    from cft.files.backbone import save_backbone
    from cft.nn.backbone import Backbone
    from cft.spec import BackboneSpec

    torch.manual_seed(123)
    other = tmp_path / "other_backbone.safetensors"
    save_backbone(Backbone(BackboneSpec(num_layers=2, hidden=32, dropout=0.0)), other)
    wrong = run_cli_inprocess("train", parts["recipe"], "-o", tmp_path / "wrong", *calib, "--set", f"backbone.path={other}")
    assert_user_error(wrong, "was trained on backbone", "backbone.path")


@pytest.mark.slow
def test_nr_sr_flow_on_real_tox21(data_root, tmp_path):
    """The must-show flow on ../shared/data/tox21.csv at small settings: NR and SR bundles on one
    frozen backbone, composed with a prior from the training labels; each part's tasks keep their
    test ROC-AUC within 0.005 without calibration."""
    recipe = tmp_path / "tox21_small.yaml"
    recipe.write_text(
        "seed: 0\ndata: {source: csv, path: tox21.csv}\nbackbone: {num_layers: 3, hidden: 64, dropout: 0.0}\n"
        "adapters: {num_adapters: 4, rank: 8}\ntrain: {epochs: 2, batch_size: 64, lr: 0.003, patience: null, threads: 1}\neval: {metric: rocauc}\n"
    )
    root = ["--data-root", data_root]
    for part in ("NR", "SR"):
        result = run_cli("train", recipe, "-o", tmp_path / part, "--set", f"data.tasks=[{part}-*]", *root)
        assert result.returncode == 0, result.stderr
    composed = tmp_path / "NR_SR.safetensors"
    result = run_cli("compose", tmp_path / "NR", tmp_path / "SR", "--prior-from", "tox21.csv", "-o", composed, *root)
    assert result.returncode == 0, result.stderr
    scores = {}
    for name, target in (("NR", tmp_path / "NR"), ("SR", tmp_path / "SR"), ("NR_SR", composed)):
        out = tmp_path / f"{name}.json"
        assert run_cli("eval", target, "--json", out, *root).returncode == 0
        scores[name] = json.loads(out.read_text())["per_task"]
    assert len(scores["NR_SR"]) == 12
    for part in ("NR", "SR"):
        for task, value in scores[part].items():
            assert abs(scores["NR_SR"][task] - value) <= 0.005, (task, scores["NR_SR"][task], value)
    assert run_cli("inspect-routing", composed, "--json", tmp_path / "r.json").returncode == 0
    routing = json.loads((tmp_path / "r.json").read_text())
    mass = np.mean([layer["route_mass_by_part"] for layer in routing["layers"].values()], axis=0)
    assert mass[0][1] > 0 and mass[1][0] > 0, "the prior induces routing across the two bundles"


def test_compose_rule_threshold_and_calibration_folder(parts, tmp_path):
    """--compose-rule / --compose-threshold reach the bundle; out-of-range values are refused
    before anything is written; --calibrate-dir names the calibration run folder."""
    out = tmp_path / "AB_prop.safetensors"
    result = run_cli_inprocess("compose", parts["A"], parts["B"], "--prior-from", parts["recipe"], "--compose-rule", "propagate",
                               "--compose-threshold", "0.2", "-o", out)
    assert result.returncode == 0, result.stderr
    spec = _header(out)["spec"]
    assert spec["compose_rule"] == "propagate" and spec["compose_threshold"] == 0.2
    for option, value, fragment in (("--compose-rule", "bogus", "residual"), ("--compose-threshold", "1.5", "[0, 1)"),
                                    ("--compose-mix", "2", "[0, 1]")):
        bad = tmp_path / f"bad{option}.safetensors"
        assert_user_error(run_cli_inprocess("compose", parts["A"], parts["B"], option, value, "-o", bad), option, fragment)
        assert not bad.exists()
    cal = tmp_path / "AB_cal.safetensors"
    folder = tmp_path / "my-calibration"
    calibrated = run_cli_inprocess("compose", parts["A"], parts["B"], "--prior-from", parts["recipe"], "-o", cal, "--calibrate", parts["recipe"],
                                   "--calibrate-dir", folder, "--set", "train.max_steps=2", "--set", "train.epochs=1")
    assert calibrated.returncode == 0, calibrated.stderr
    assert (folder / "summary.json").exists() and not (tmp_path / "AB_cal.calibration").exists()


def test_calibration_does_not_average_the_routes(parts, tmp_path):
    """A recipe's train.ema is not used by --calibrate: the average would start at the composed
    routes and, over a few hundred steps, keep decay**steps of them (said on the terminal)."""
    import yaml
    from safetensors.torch import load_file

    bundles = {}
    for name, extra in (("plain", []), ("ema", ["--set", "train.ema=0.99"])):
        out, folder = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.calibration"
        result = run_cli_inprocess("compose", parts["A"], parts["B"], "--prior-from", parts["recipe"], "-o", out, "--calibrate", parts["recipe"],
                                   "--set", "train.max_steps=3", "--set", "train.epochs=1", *extra)
        assert result.returncode == 0, result.stderr
        assert ("train.ema=0.99 is not used" in result.stderr + result.stdout) == bool(extra)
        assert yaml.safe_load((folder / "recipe.yaml").read_text())["train"]["ema"] is None
        bundles[name] = load_file(str(out))
    assert bundles["plain"].keys() == bundles["ema"].keys()
    for key, tensor in bundles["plain"].items():
        assert torch.equal(tensor, bundles["ema"][key]), f"{key}: calibration with train.ema set differs from one without"


def test_calibration_of_parts_without_routers_is_refused(parts, tmp_path):
    """Parts with one adapter per layer (the shipped recipes') have no router: their composed
    routes are fixed, so --calibrate is refused before anything is written; `cft train` with
    train.trainable=routing on such a bundle names the reason too."""
    import json

    single = {}
    for name, tasks in zip("CD", (A_TASKS, B_TASKS)):
        out = tmp_path / name
        result = run_cli_inprocess("train", parts["recipe"], "-o", out, "--set", f"data.tasks={json.dumps(tasks)}",
                                   "--set", "adapters.num_adapters=1", "--set", "train.epochs=1")
        assert result.returncode == 0, result.stderr
        single[name] = out / "bundle.safetensors"
    cal = tmp_path / "CD_cal.safetensors"
    refused = run_cli_inprocess("compose", single["C"], single["D"], "--prior-from", parts["recipe"], "-o", cal,
                                "--calibrate", parts["recipe"], "--set", "train.max_steps=2")
    assert_user_error(refused, "--calibrate", "none of its parts has one", "adapters.num_adapters > 1")
    assert not cal.exists() and not (tmp_path / "CD_cal.calibration").exists()
    composed = tmp_path / "CD.safetensors"
    assert run_cli_inprocess("compose", single["C"], single["D"], "--prior-from", parts["recipe"], "-o", composed).returncode == 0
    routing_only = run_cli_inprocess("train", parts["recipe"], "-o", tmp_path / "CD_train", "--set", f"train.init_bundle={composed}",
                                     "--set", "train.trainable=routing", "--set", f"data.tasks={json.dumps(A_TASKS + B_TASKS)}",
                                     "--set", "train.max_steps=2")
    assert_user_error(routing_only, "train.trainable is routing", "has no router")
