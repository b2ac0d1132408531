"""End to end through the real CLI (tiny settings): train, eval, resume, bundle round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from conftest import REPO, assert_user_error, run_cli

SUMMARY_KEYS = {"metric", "best_epoch", "valid", "test", "params", "routing", "tasks", "seconds", "graphs_per_second"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import TINY_RECIPE

    folder = tmp_path_factory.mktemp("train")
    recipe = folder / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    run = folder / "run"
    result = run_cli("train", recipe, "-o", run)
    assert result.returncode == 0, result.stderr
    return recipe, run, result


def test_train_writes_the_run_folder(trained):
    _, run, result = trained
    for name in ("recipe.yaml", "metrics.jsonl", "summary.json", "bundle.safetensors", "backbone.safetensors", "checkpoint.pt",
                 "routing_history.safetensors", "skipped_smiles.csv"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["metric"] == "rocauc" and 0.0 <= summary["test"]["mean"] <= 1.0
    assert set(summary["test"]["per_task"]) == set(summary["tasks"])
    assert {"trainable", "backbone", "total"} <= set(summary["params"])
    assert {"featurise", "train"} <= set(summary["seconds"])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert {"epoch", "loss", "task_loss", "reg_loss", "valid_rocauc", "routing"} <= set(line)
        assert set(line["routing"]) == {"0", "1"}
        assert {"entropy", "active_fraction"} <= set(line["routing"]["0"])
    # the summary's routes are the best epoch's (the weights the bundle keeps); the task read-out's
    # deciding layer is the last insertion layer, its entropy given as a fraction of ln K
    best = lines[summary["best_epoch"] - 1]["routing"]
    assert summary["routing"]["layers"].keys() == best.keys()
    for layer, stats in best.items():
        assert summary["routing"]["layers"][layer] == pytest.approx(stats), layer
    k = yaml.safe_load((run / "recipe.yaml").read_text())["adapters"]["num_adapters"]
    assert summary["routing"]["deciding_entropy"] == pytest.approx(best["1"]["entropy"] / math.log(k))
    assert "test rocauc" in result.stdout


def test_routing_history_holds_every_epoch(trained):
    from safetensors import safe_open

    _, run, _ = trained
    with safe_open(str(run / "routing_history.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
        assert json.loads(fh.metadata()["cft"])["tasks"][0] == "halogen_any"
    assert {f"epoch{e:04d}/layer{l}" for e in (1, 2, 3) for l in (0, 1)} == keys


def test_eval_reproduces_the_summary(trained, tmp_path):
    _, run, _ = trained
    out = tmp_path / "eval.json"
    result = run_cli("eval", run, "--split", "test", "--json", out)
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(out.read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert evaluated["mean"] == pytest.approx(summary["test"]["mean"], abs=1e-9)
    assert evaluated["per_task"].keys() == summary["test"]["per_task"].keys()
    assert "mean" in result.stdout
    valid = run_cli("eval", run / "bundle.safetensors", "--split", "valid")
    assert valid.returncode == 0 and f"{summary['valid']['mean']:.4f}" in valid.stdout


def test_bundle_round_trip(trained, tmp_path):
    from torch_geometric.loader import DataLoader

    from cft.apply.evaluate import bundle_data_config
    from cft.data.dataset import load_dataset
    from cft.files.bundle import load_bundle, save_bundle

    _, run, _ = trained
    model, info = load_bundle(run / "bundle.safetensors")
    assert info.tasks[0] == "halogen_any" and info.metrics["metric"] == "rocauc"
    copy = tmp_path / "copy.safetensors"
    save_bundle(copy, model, data=info.data, metrics=info.metrics, provenance=info.provenance)
    assert copy.read_bytes() == (run / "bundle.safetensors").read_bytes(), "save(load(b)) == b, byte for byte"
    again, _ = load_bundle(copy, backbone=model.backbone)
    data = load_dataset(bundle_data_config(info), REPO)
    batch = next(iter(DataLoader(data.subset("test"), batch_size=64)))
    with torch.no_grad():
        assert torch.equal(model(batch), again(batch))


def test_existing_run_folder_is_protected(trained, tmp_path):
    recipe, run, _ = trained
    assert_user_error(run_cli("train", recipe, "-o", run), "already holds a run of this recipe", "--resume", "--overwrite")
    assert_user_error(run_cli("train", recipe, "-o", run, "--set", "seed=5"), "a run of a different recipe")
    assert_user_error(run_cli("train", recipe, "-o", run, "--resume", "--set", "seed=5"), "seed: 0 there, 5 now")
    finished = run_cli("train", recipe, "-o", run, "--resume")
    assert finished.returncode == 0 and "already finished" in finished.stderr
    stranger = tmp_path / "notarun"
    stranger.mkdir()
    (stranger / "thesis.txt").write_text("precious")
    assert_user_error(run_cli("train", recipe, "-o", stranger, "--overwrite"), "does not hold a cft run")
    assert (stranger / "thesis.txt").read_text() == "precious"


def test_a_run_from_before_a_recipe_field_existed_resumes(trained, tmp_path):
    """A run folder whose recipe.yaml lacks a field a later cft added (at its default: what runs did
    before it existed) resumes; a different value of a field is still refused."""
    import shutil

    import yaml

    recipe, run, _ = trained
    older = tmp_path / "older"
    shutil.copytree(run, older)
    saved = yaml.safe_load((older / "recipe.yaml").read_text())
    del saved["adapters"]["virtual_node"]  # a run of the code before 9be11d6 added the field
    (older / "recipe.yaml").write_text(yaml.safe_dump(saved))
    finished = run_cli("train", recipe, "-o", older, "--resume")
    assert finished.returncode == 0 and "already finished" in finished.stderr, finished.stderr
    saved["adapters"]["rank"] = saved["adapters"]["rank"] + 1
    (older / "recipe.yaml").write_text(yaml.safe_dump(saved))
    assert_user_error(run_cli("train", recipe, "-o", older, "--resume"), "adapters.rank")


def test_a_run_resumes_with_its_backbone_file_moved(trained, tmp_path):
    """backbone.path names another place (a moved project, another checkout) but the same weights
    (the fingerprint of the copy the run made when it started): the run resumes. A file with other
    weights there is refused, naming backbone.path."""
    import shutil

    import torch
    import yaml

    from cft.files.backbone import load_backbone, save_backbone

    recipe, run, _ = trained
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    there, here, other = (tmp_path / name / "backbone.safetensors" for name in ("there", "here", "other"))
    for path in (there, here, other):
        path.parent.mkdir()
    shutil.copy(run / "backbone.safetensors", there)
    shutil.copy(run / "backbone.safetensors", here)
    saved = yaml.safe_load((moved / "recipe.yaml").read_text())
    saved["backbone"]["path"] = str(there)  # the run was started from a file at `there`
    (moved / "recipe.yaml").write_text(yaml.safe_dump(saved))
    finished = run_cli("train", recipe, "-o", moved, "--resume", "--set", f"backbone.path={here}")
    assert finished.returncode == 0 and "already finished" in finished.stderr, finished.stderr
    changed = load_backbone(here)
    with torch.no_grad():
        changed.atom_encoder.atom_embedding_list[0].weight.add_(0.01)
    save_backbone(changed, other)
    assert_user_error(run_cli("train", recipe, "-o", moved, "--resume", "--set", f"backbone.path={other}"), "backbone.path")


def test_interrupt_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Ctrl-C at a fixed optimiser step of the second epoch (a hook in the CLI process sends SIGINT to
    itself after step 45: deterministic on any machine): exit 130, a checkpoint, and the resumed run
    ends with the same metrics and byte-identical bundle as an uninterrupted one."""
    from conftest import TINY_RECIPE
    from signal_hook import fired, signal_at_step_env

    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_RECIPE.replace("limit: 400", "limit: 1500").replace("epochs: 3", "epochs: 4"))
    straight = tmp_path / "straight"
    assert run_cli("train", recipe, "-o", straight).returncode == 0
    hook = tmp_path / "hook"
    run = tmp_path / "interrupted"
    stopped = run_cli("train", recipe, "-o", run, env=signal_at_step_env(hook, step=45, sig="SIGINT"))
    assert [f["step"] for f in fired(hook)] == [45], fired(hook)
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    err = " ".join(stopped.stderr.split())
    assert "Interrupted (SIGINT) at epoch 2" in err and "Resume with: cft train" in err and "--resume" in err, err
    assert "Traceback" not in stopped.stderr
    assert (run / "checkpoint.pt").exists() and not (run / "bundle.safetensors").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1, "one finished epoch before the interruption"
    resumed = run_cli("train", recipe, "-o", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "at epoch 2, batch" in " ".join(resumed.stderr.split()), "resumes mid-epoch where it stopped"
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    assert a["test"] == b["test"] and a["valid"] == b["valid"] and a["best_epoch"] == b["best_epoch"]
    metrics = lambda p: [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [m["epoch"] for m in metrics(run)] == [1, 2, 3, 4], "the epoch counter continues after the resume"
    assert metrics(straight) == metrics(run)
    assert (straight / "bundle.safetensors").read_bytes() == (run / "bundle.safetensors").read_bytes()


def test_overwrite_replaces_a_run(trained, tmp_path):
    recipe, run, _ = trained
    target = tmp_path / "o"
    assert run_cli("train", recipe, "-o", target, "--set", "train.epochs=1").returncode == 0
    result = run_cli("train", recipe, "-o", target, "--overwrite", "--set", "train.epochs=2")
    assert result.returncode == 0, result.stderr
    assert len((target / "metrics.jsonl").read_text().splitlines()) == 2


def test_baselines_share_the_code_path(trained, tmp_path):
    recipe, _, _ = trained
    full = run_cli("train", recipe, "-o", tmp_path / "full", "--set", "backbone.freeze=false", "--set", "adapters.enabled=false", "--set", "train.epochs=1")
    assert full.returncode == 0, full.stderr
    head = run_cli("train", recipe, "-o", tmp_path / "head", "--set", "adapters.enabled=false", "--set", "train.epochs=1")
    assert head.returncode == 0, head.stderr
    s_full = json.loads((tmp_path / "full" / "summary.json").read_text())
    s_head = json.loads((tmp_path / "head" / "summary.json").read_text())
    assert s_full["params"]["trainable"] == s_full["params"]["total"]
    assert s_head["params"]["trainable"] == 8 * 32 + 8, "head only: one logit per task"
    # the fine-tuned backbone is what the full fine-tuning bundle refers to
    ev = run_cli("eval", tmp_path / "full")
    assert ev.returncode == 0, ev.stderr


def test_frozen_dropout_trains_and_evaluates_through_the_cli(trained, tmp_path):
    recipe, _, _ = trained
    runs = {}
    for rate in ("0.0", "0.5"):
        result = run_cli("train", recipe, "-o", tmp_path / rate, "--set", "train.epochs=1", "--set", f"backbone.frozen_dropout={rate}")
        assert result.returncode == 0, result.stderr
        runs[rate] = json.loads((tmp_path / rate / "summary.json").read_text())
    assert runs["0.5"]["valid"]["mean"] != runs["0.0"]["valid"]["mean"], "dropout changed the training"
    assert runs["0.5"]["params"]["trainable"] == runs["0.0"]["params"]["trainable"]
    evaluated = run_cli("eval", tmp_path / "0.5", "--split", "test", "--json", tmp_path / "eval.json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["mean"] == pytest.approx(runs["0.5"]["test"]["mean"], abs=1e-9)


def test_route_entropy_sharpens_the_routes_and_route_balance_spreads_them_through_the_cli(trained, tmp_path):
    """beta alone sharpens the expert gates, and on the tiny recipe sends every task to the same
    adapter (balance near 0); gamma keeps them sharp but spread over the adapters."""
    recipe, _, _ = trained
    entropy, routing = {}, {}
    for beta, gamma in (("0", "0"), ("5", "0"), ("5", "5")):
        run = tmp_path / f"b{beta}g{gamma}"
        result = run_cli("train", recipe, "-o", run, "--set", "train.epochs=2", "--set", "train.lr=0.05",
                         "--set", f"train.route_entropy={beta}", "--set", f"train.route_balance={gamma}")
        assert result.returncode == 0, result.stderr
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        entropy[beta, gamma] = last["routing"]["1"]["entropy"]  # the tiny recipe's last insertion layer: the experts' gates
        routing[beta, gamma] = json.loads((run / "summary.json").read_text())["routing"]
    assert entropy["5", "0"] < entropy["0", "0"] - 0.05, entropy
    assert routing["5", "0"]["deciding_entropy"] < routing["0", "0"]["deciding_entropy"] - 0.05, routing
    assert routing["5", "5"]["deciding_entropy"] < routing["0", "0"]["deciding_entropy"] - 0.05, routing
    assert routing["5", "5"]["deciding_balance"] > routing["5", "0"]["deciding_balance"] + 0.3, routing


def test_eval_refuses_a_wrong_backbone(trained, tmp_path):
    _, run, _ = trained
    from cft.files.backbone import save_backbone
    from cft.nn.backbone import Backbone
    from cft.spec import BackboneSpec

    torch.manual_seed(123)
    other = tmp_path / "other.safetensors"
    save_backbone(Backbone(BackboneSpec(num_layers=2, hidden=32, dropout=0.0)), other)
    assert_user_error(run_cli("eval", run, "--backbone", other), "is not the one bundle", "fingerprint")
