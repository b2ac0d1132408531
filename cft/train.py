"""`cft train`: build the model a recipe describes, train it, and write the run folder.

OGB protocol: the model is selected on the validation metric; the reported test score is the
test score of the best validation epoch. Runs are seeded and deterministic on CPU; the
checkpoint holds everything that determines the rest of the run (model, optimiser, schedule,
RNG state, position in the epoch), so `--resume` after a crash or Ctrl-C ends with the same
metrics and the same bundle bytes as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch_geometric.loader import DataLoader

from cft import __version__
from cft.backbone import Backbone, BackboneSpec, backbone_fingerprint, load_backbone, save_backbone
from cft.bundle import build_model, find_backbone, load_bundle_tensors, read_bundle_info, save_bundle
from cft.console import info, progress_bar, warn
from cft.data import MolDataset, load_dataset
from cft.data.graphs import GraphDataset
from cft.distributed import DistContext, single
from cft.errors import CftError, TrainingInterrupted
from cft.fsutil import atomic_copy, atomic_write_json, atomic_write_text, atomic_write_with
from cft.metrics import HIGHER_IS_BETTER, better, score
from cft.model import CftModel, ModelSpec
from cft.prior import identity_relation, read_relation, relation_from_labels
from cft.recipe import PriorConfig, Recipe
from cft.routing import PartSpec
from cft.runfolder import RunFolder
from cft.seeding import restore_rng_state, rng_state_tensors, seed_everything
from cft.stfile import write_safetensors

CHECKPOINT_FORMAT = "cft-checkpoint-1"


# --------------------------------------------------------------------------- building blocks


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise CftError(f"train.device {requested!r} is not a device (use auto, cpu, cuda or cuda:N).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CftError(f"train.device is {requested!r} but CUDA is not available on this machine.", hint="Use --device cpu or auto.")
    return device


def resolve_metric(recipe: Recipe, dataset: MolDataset) -> str:
    metric = dataset.metric if recipe.eval.metric == "auto" else recipe.eval.metric
    kinds = set(dataset.kinds)
    if metric == "rmse" and kinds != {"regression"}:
        raise CftError(f"eval.metric rmse needs regression tasks, but {dataset.name}'s tasks are binary.", hint="Use rocauc or ap.")
    if metric in ("rocauc", "ap") and kinds != {"binary"}:
        raise CftError(f"eval.metric {metric} needs binary tasks, but {dataset.name} has regression tasks.", hint="Use rmse.")
    return metric


def build_relation(cfg: PriorConfig, dataset: MolDataset) -> np.ndarray:
    """The prior over the dataset's tasks; `labels` uses the training split only."""
    source = cfg.init if cfg.source == "learned" else cfg.source
    if source == "identity":
        return identity_relation(len(dataset.tasks))
    if source == "file":
        return read_relation(cfg.path or "", dataset.tasks)
    return relation_from_labels(dataset.labels("train"), cfg.method, cfg.min_support, cfg.min_value, cfg.top_k)


def model_spec(recipe: Recipe, dataset: MolDataset, backbone_spec: BackboneSpec) -> ModelSpec:
    ad, rt, pr = recipe.adapters, recipe.routing, recipe.prior
    layers = [] if not ad.enabled else (list(range(backbone_spec.num_layers)) if ad.layers == "all" else list(ad.layers))
    part = PartSpec(
        name=dataset.name, tasks=list(dataset.tasks), layers=layers, num_adapters=ad.num_adapters, rank=ad.rank,
        embed_dim=rt.embed_dim, mode=rt.mode, temperature=rt.temperature, threshold=rt.threshold, top_k=rt.top_k,
        prior_steps=pr.steps, prior_source=pr.source if pr.source != "learned" else f"learned:{pr.init}",
        learned_prior=pr.source == "learned", prior_anchor=pr.anchor,
    )
    return ModelSpec(
        backbone=backbone_spec, tasks=list(dataset.tasks), kinds=list(dataset.kinds), parts=[part],
        activation=ad.activation, scale=ad.scale, adapter_dropout=ad.dropout,
    )


def backbone_start_path(recipe: Recipe, run: RunFolder) -> Path:
    return run.file("backbone.safetensors" if recipe.backbone.freeze else "backbone_start.safetensors")


def file_backbone_path(recipe: Recipe) -> Optional[Path]:
    """The backbone file a run starts from: `backbone.path`, or, for a run that starts from a bundle
    and names neither a path nor a pretrain stage, that bundle's own backbone (found as `cft eval`
    finds it)."""
    bb = recipe.backbone
    if bb.path:
        return Path(bb.path)
    if recipe.train.init_bundle and not bb.pretrain:
        from cft.bundle import find_backbone_path

        return Path(find_backbone_path(read_bundle_info(recipe.train.init_bundle)))
    return None


def load_backbone_file(recipe: Recipe) -> Backbone:
    """The backbone of `backbone.path`, refused when it is not the architecture the recipe describes
    (a silent mismatch would train adapters on layers that do not exist). An init bundle's own
    backbone is taken as it is: the bundle, not the recipe, defines that architecture."""
    bb = recipe.backbone
    if not bb.path:
        return load_backbone(file_backbone_path(recipe))
    backbone = load_backbone(bb.path)
    wanted = BackboneSpec.from_config(bb)
    fields = ["arch", "virtual_node", "num_layers", "hidden", "pooling", "residual"] + ([] if bb.freeze else ["dropout"])
    differences = [f"{name}: {getattr(backbone.spec, name)!r} in the file, {getattr(wanted, name)!r} in the recipe" for name in fields if getattr(backbone.spec, name) != getattr(wanted, name)]
    if differences:
        raise CftError(
            f"backbone.path {bb.path} is not the backbone the recipe describes ({'; '.join(differences)}).",
            hint="Set the recipe's backbone section to the file's architecture (backbone.num_layers, backbone.hidden, ...).",
        )
    return backbone


def obtain_backbone(
    recipe: Recipe, run: RunFolder, data_root: Path, device: torch.device, resume: bool, dist: DistContext, file_backbone: Optional[Backbone] = None
) -> tuple[Backbone, dict]:
    """The starting backbone: a file, a (cached) pretrain stage, or a seeded random one.
    A copy is kept in the run folder so the run's bundle always finds its backbone."""
    bb = recipe.backbone
    start_path = backbone_start_path(recipe, run)
    if resume and start_path.exists():
        return load_backbone(start_path), {"source": "run folder"}
    if bb.path or file_backbone is not None:
        path = bb.path or file_backbone_path(recipe)
        backbone = file_backbone if file_backbone is not None else load_backbone_file(recipe)
        if dist.is_main:
            atomic_copy(path, start_path)
        return backbone, {"source": "file", "path": str(path)}
    spec = BackboneSpec.from_config(bb)
    if bb.pretrain:
        from cft.pretrain import pretrained_backbone

        made = dist.main_first(lambda: pretrained_backbone(bb.pretrain, spec, recipe.seed, data_root, start_path, device), device)
        backbone, details = made if dist.is_main else (load_backbone(start_path), {"source": "pretrain (rank 0)"})
        return backbone, {"source": "pretrain", "method": bb.pretrain.method, **details}
    seed_everything(recipe.seed)
    backbone = Backbone(spec)
    if dist.is_main:
        save_backbone(backbone, start_path, info={"source": "random", "seed": recipe.seed})
    return backbone, {"source": "random"}


def read_init_bundle(recipe: Recipe, dataset: MolDataset):
    """The header of train.init_bundle, checked against the data's tasks."""
    info_ = read_bundle_info(recipe.train.init_bundle)
    if info_.spec.tasks != dataset.tasks:
        missing = [t for t in info_.spec.tasks if t not in dataset.tasks]
        raise CftError(
            f"train.init_bundle {recipe.train.init_bundle} predicts tasks the data does not provide in that order"
            + (f" (missing: {', '.join(missing[:8])})" if missing else "")
            + ".",
            hint="Select the bundle's tasks, in its order, with data.tasks.",
        )
    return info_


def build_training_model(
    recipe: Recipe, dataset: MolDataset, backbone: Backbone, relation: Optional[np.ndarray] = None, init_info=None
) -> tuple[CftModel, dict]:
    """A fresh model, or (train.init_bundle) a bundle's model, e.g. a composed one to calibrate.
    `relation` / `init_info`: the prior or bundle header, when already read and checked."""
    if recipe.train.init_bundle:
        info_ = init_info if init_info is not None else read_init_bundle(recipe, dataset)
        if backbone_fingerprint(backbone) != info_.backbone_fingerprint:
            raise CftError(
                f"train.init_bundle {recipe.train.init_bundle} was trained on backbone {info_.backbone_fingerprint}, but this recipe's "
                f"backbone is {backbone_fingerprint(backbone)}.",
                hint="Set backbone.path to the bundle's backbone.safetensors, or leave backbone.path and backbone.pretrain unset to use it.",
            )
        model = build_model(info_, backbone, freeze_backbone=recipe.backbone.freeze)
        load_bundle_tensors(model, info_)
        return model, {"init_bundle": recipe.train.init_bundle, "provenance": info_.provenance, "data": info_.data}
    seed_everything(recipe.seed)
    spec = model_spec(recipe, dataset, backbone.spec)
    relation = build_relation(recipe.prior, dataset) if relation is None else relation
    model = CftModel(backbone, spec, [relation], freeze_backbone=recipe.backbone.freeze)
    return model, {}


def set_trainable(model: CftModel, recipe: Recipe) -> None:
    if recipe.train.trainable == "routing":
        model.requires_grad_(False)
        for part in model.router.parts:
            for name, param in part.named_parameters():
                param.requires_grad_(True)
    else:
        model.requires_grad_(True)
        if recipe.backbone.freeze:
            model.backbone.requires_grad_(False)


def make_optimizer(model: CftModel, recipe: Recipe) -> torch.optim.Optimizer:
    tr = recipe.train
    head = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [g for g in ({"params": rest, "lr": tr.lr}, {"params": head, "lr": tr.head_lr or tr.lr}) if g["params"]]
    if not groups:
        raise CftError("Nothing to train: every parameter is frozen.", hint="Enable adapters, unfreeze the backbone, or train the heads.")
    return torch.optim.AdamW(groups, weight_decay=tr.weight_decay)


def make_scheduler(optimizer, recipe: Recipe, steps_per_epoch: int):
    tr = recipe.train
    if tr.scheduler == "plateau":
        mode = "max" if HIGHER_IS_BETTER.get(recipe.eval.metric if recipe.eval.metric != "auto" else "rocauc", True) else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=3)
    warmup = tr.warmup_epochs * steps_per_epoch
    total = max(tr.epochs * steps_per_epoch, 1)
    if tr.max_steps:
        total = min(total, tr.max_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if tr.scheduler == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def predict_logits(model: CftModel, dataset: GraphDataset, batch_size: int, device: torch.device, amp: bool = False) -> np.ndarray:
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    outputs = []
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        with autocast(device, amp):
            outputs.append(model(batch).float().cpu())
    if not outputs:
        return np.zeros((0, len(model.spec.tasks)), dtype=np.float32)
    return torch.cat(outputs).numpy()


def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate_split(model: CftModel, dataset: MolDataset, split: str, metric: str, batch_size: int, device: torch.device, dist: DistContext, amp: bool = False) -> dict:
    indices = dataset.split[split]
    logits = predict_logits(model, GraphDataset(dataset.store, dataset.y, dist.shard(indices)), batch_size, device, amp)
    logits = dist.gather_rows(logits, len(indices), device)
    return score(metric, dataset.labels(split), logits, dataset.tasks)


# --------------------------------------------------------------------------- the loop


@dataclass
class LoopState:
    epoch: int = 0  # next epoch to run (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already done (mid-epoch checkpoint)
    step: int = 0
    best_metric: Optional[float] = None
    best_epoch: int = -1
    bad_epochs: int = 0
    train_seconds: float = 0.0
    graphs_seen: int = 0
    history: list = field(default_factory=list)
    epoch_loss: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0])  # task, reg, total, batches
    finished: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Interrupt:
    """Turns SIGINT (Ctrl-C) and SIGTERM (what schedulers send before killing a job) into a flag
    checked between batches; a second signal of the same kind acts as it normally does."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous: dict = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def _handler(self, signum, frame):
        if self.requested:
            previous = self._previous.get(signum)
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            if signum == signal.SIGINT and previous is signal.default_int_handler:
                raise KeyboardInterrupt
            if signum == signal.SIGTERM:
                signal.raise_signal(signum)
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)


class Trainer:
    def __init__(self, recipe: Recipe, run: RunFolder, data_root: Path, device: torch.device, dist: DistContext, resume_command: str):
        self.recipe, self.run, self.data_root, self.device, self.dist = recipe, run, data_root, device, dist
        self.resume_command = resume_command
        self.amp = recipe.train.bf16 and device.type == "cuda"

    # --------------------------------------------------------------- setup

    def load_inputs(self, resume: bool, dataset: Optional[MolDataset] = None) -> None:
        """Read and check every input the run needs (data, prior, backbone file, init bundle)
        before anything is written, so a bad input leaves the output folder untouched.
        `dataset` replaces loading the recipe's data (benchmarks build theirs in memory)."""
        recipe = self.recipe
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        started = time.perf_counter()
        self.dataset = dataset if dataset is not None else load_dataset(recipe.data, self.data_root, recipe.seed)
        self.featurise_seconds = self.dataset.featurise_seconds
        self.data_seconds = time.perf_counter() - started
        self.metric = resolve_metric(recipe, self.dataset)
        self.relation = self.init_bundle_info = self.file_backbone = None
        if recipe.train.init_bundle:
            self.init_bundle_info = read_init_bundle(recipe, self.dataset)
        else:
            self.relation = build_relation(recipe.prior, self.dataset)
        if file_backbone_path(recipe) is not None and not (resume and backbone_start_path(recipe, self.run).exists()):
            self.file_backbone = load_backbone_file(recipe)

    def setup(self, resume: bool) -> None:
        recipe, dist = self.recipe, self.dist
        if not hasattr(self, "dataset"):
            self.load_inputs(resume)
        if dist.is_main:
            self._write_skipped()
        backbone, self.backbone_info = obtain_backbone(recipe, self.run, self.data_root, self.device, resume, dist, self.file_backbone)
        self.model, self.init_info = build_training_model(recipe, self.dataset, backbone, self.relation, self.init_bundle_info)
        set_trainable(self.model, recipe)
        self.model.to(self.device)
        self.train_model = self._wrap(self.model)
        self.optimizer = make_optimizer(self.model, recipe)
        self.steps_per_epoch = math.ceil(math.ceil(len(self.dataset.split["train"]) / dist.world_size) / self.local_batch_size)
        self.scheduler = make_scheduler(self.optimizer, recipe, self.steps_per_epoch)
        self.state = LoopState()
        self.best_state = self._snapshot()
        if resume and self.run.checkpoint.exists():
            self._load_checkpoint()
        elif resume:
            info(f"{self.run.path}: no checkpoint yet; starting from the beginning.")

    def _wrap(self, model: CftModel):
        wrapped = model
        if self.recipe.train.compile:
            wrapped = torch.compile(wrapped)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=ids, find_unused_parameters=True)
        return wrapped

    @property
    def local_batch_size(self) -> int:
        return max(1, self.recipe.train.batch_size // self.dist.world_size)

    def _write_skipped(self) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["row", "smiles"])
        writer.writerows([row + 2, s] for row, s in self.dataset.skipped)
        atomic_write_text(self.run.file("skipped_smiles.csv"), buffer.getvalue())

    # --------------------------------------------------------------- checkpoints

    def _snapshot(self) -> dict[str, torch.Tensor]:
        skip_backbone = self.model.freeze_backbone
        return {k: v.detach().clone().cpu() for k, v in self.model.state_dict().items() if not (skip_backbone and k.startswith("backbone."))}

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": self.state.to_dict(),
            "best_state": self.best_state,
            "rng": rng_state_tensors(),
        }
        atomic_write_with(self.run.checkpoint, lambda tmp: torch.save(payload, tmp))
        self.checkpoint_at = (self.state.epoch, self.state.batch_in_epoch)

    def _load_checkpoint(self) -> None:
        path = self.run.checkpoint
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if payload.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"format {payload.get('format')!r}")
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
            self.state = LoopState(**payload["state"])
            self.checkpoint_at = (self.state.epoch, self.state.batch_in_epoch)
            self.best_state = payload["best_state"]
            restore_rng_state(payload["rng"])
        except CftError:
            raise
        except Exception as exc:
            raise CftError(
                f"Checkpoint {path} cannot be resumed from ({type(exc).__name__}: {str(exc)[:200]}).",
                hint="It is damaged or from another cft version; start again with --overwrite.",
            ) from None
        self.model.to(self.device)
        info(f"resuming {self.run.path} at epoch {self.state.epoch + 1}" + (f", batch {self.state.batch_in_epoch}" if self.state.batch_in_epoch else ""))

    # --------------------------------------------------------------- epochs

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The same permutation on every rank and every (re)start: seeded by (seed, epoch)."""
        order = self.dist.epoch_order(self.dataset.split["train"], self.recipe.seed, epoch)
        bs = self.local_batch_size
        if len(order) % bs == 1 and len(order) > 1:
            order = order[:-1]  # a one-graph batch breaks BatchNorm in training mode
        return order

    def run_epochs(self) -> None:
        recipe, state = self.recipe, self.state
        with Interrupt() as interrupt:
            while state.epoch < recipe.train.epochs and not state.finished:
                self._train_epoch(interrupt)
                if state.finished:
                    break
                self._end_epoch()

    def _train_epoch(self, interrupt: Interrupt) -> None:
        recipe, state, model = self.recipe, self.state, self.model
        order = self._epoch_order(state.epoch)
        bs = self.local_batch_size
        start_batch = state.batch_in_epoch
        loader = DataLoader(
            GraphDataset(self.dataset.store, self.dataset.y, order[start_batch * bs :]),
            batch_size=bs, shuffle=False, num_workers=recipe.train.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.train_model.train()
        lam = recipe.train.reg_strength
        epoch_started = time.perf_counter()
        total_batches = math.ceil(len(order) / bs)
        with progress_bar(f"epoch {state.epoch + 1}/{recipe.train.epochs}", total=total_batches) as advance:
            advance(start_batch)
            for batch in loader:
                batch = batch.to(self.device, non_blocking=True)
                with autocast(self.device, self.amp):
                    logits, routes = self._forward(batch)
                    task_loss = model.task_loss(logits.float(), batch.y)
                    reg = model.router.regularizer(routes) if lam > 0 else task_loss.new_zeros(())
                    loss = task_loss + lam * reg
                loss_value = float(loss.detach())  # one sync per step: a NaN must stop us before the update
                if not math.isfinite(loss_value):
                    self._diverged(f"The training loss became {loss_value}", state.batch_in_epoch + 1)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.train.grad_clip:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], recipe.train.grad_clip)
                self.optimizer.step()
                if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step()
                state.step += 1
                state.batch_in_epoch += 1
                state.graphs_seen += int(batch.num_graphs)
                acc = state.epoch_loss
                acc[0], acc[1], acc[2], acc[3] = acc[0] + float(task_loss.detach()), acc[1] + float(reg.detach()), acc[2] + loss_value, acc[3] + 1
                advance(1, loss=acc[2] / acc[3])
                if recipe.train.max_steps and state.step >= recipe.train.max_steps:
                    break
                if self.dist.broadcast_flag(interrupt.requested, self.device):
                    state.train_seconds += time.perf_counter() - epoch_started
                    self.save_checkpoint()
                    raise TrainingInterrupted(
                        f"Interrupted ({interrupt.signal_name or 'SIGINT'}) at epoch {state.epoch + 1}, batch {state.batch_in_epoch}; "
                        f"checkpoint saved in {self.run.checkpoint}. Resume with: {self.resume_command}",
                        exit_code=143 if interrupt.signal_name == "SIGTERM" else 130,
                    )
        state.train_seconds += time.perf_counter() - epoch_started

    def _forward(self, batch):
        # through the wrapper (DDP / compiled) so that gradient hooks see the whole graph
        return self.train_model(batch, with_routes=True)

    def _diverged(self, what: str, batch: Optional[int] = None) -> None:
        """Stop a run whose loss or weights stopped being finite. The checkpoint on disk is the
        last good state (it is written only at the end of an epoch that stayed finite) and is
        not overwritten; no bundle or summary is written."""
        state = self.state
        where = f"epoch {state.epoch + 1}" + (f", batch {batch}" if batch is not None else "")
        at = getattr(self, "checkpoint_at", None)
        if at is not None and self.run.checkpoint.exists():
            when = f"end of epoch {at[0]}" if at[1] == 0 else f"epoch {at[0] + 1}, batch {at[1]}"
            kept = f"The last good checkpoint ({when}) is kept in {self.run.checkpoint}."
        else:
            kept = "No checkpoint was written (it diverged in the first epoch)."
        tr = self.recipe.train
        raise CftError(
            f"{what} at {where}; training stopped. {kept}",
            hint=f"Lower train.lr (now {tr.lr:g}) or train.reg_strength (now {tr.reg_strength:g})"
            + ("" if tr.grad_clip else ", or set train.grad_clip")
            + ", then start the run again with --overwrite (or another --output-dir); --resume continues only the same recipe.",
        )

    def _end_epoch(self) -> None:
        recipe, state = self.recipe, self.state
        broken = [name for name, p in self.model.named_parameters() if p.requires_grad and not torch.isfinite(p.detach()).all()]
        if broken:  # the last step of the epoch can overflow the weights while its loss was still finite
            self._diverged(f"Weights ({', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}) became NaN or inf")
        valid = evaluate_split(self.model, self.dataset, "valid", self.metric, recipe.eval.batch_size, self.device, self.dist, self.amp)
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and not math.isnan(valid["mean"]):
            self.scheduler.step(valid["mean"])
        acc = self.dist.all_reduce_sums(list(state.epoch_loss), self.device)
        n = max(acc[3], 1)
        improved = better(self.metric, valid["mean"], state.best_metric)
        if improved:
            state.best_metric, state.best_epoch, state.bad_epochs = valid["mean"], state.epoch, 0
            self.best_state = self._snapshot()
        else:
            state.bad_epochs += 1
        record = {
            "epoch": state.epoch + 1,
            "loss": acc[2] / n,
            "task_loss": acc[0] / n,
            "reg_loss": acc[1] / n,
            f"valid_{self.metric}": valid["mean"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "step": state.step,
            "seconds": state.train_seconds,
            "routing": self.model.routing_stats(),
        }
        state.history.append(record)
        routes = self.model.routing_matrices()
        state.epoch += 1
        state.batch_in_epoch = 0
        state.epoch_loss = [0.0, 0.0, 0.0, 0]
        if recipe.train.patience and state.bad_epochs >= recipe.train.patience:
            state.finished = True
            info(f"early stopping: no better valid {self.metric} for {recipe.train.patience} epochs")
        if recipe.train.max_steps and state.step >= recipe.train.max_steps:
            state.finished = True
        if self.dist.is_main:
            self._write_epoch_files(routes)
            marker = " [green]best[/green]" if improved else ""
            info(f"epoch {record['epoch']:>3}/{recipe.train.epochs}  loss {record['loss']:.4f}  valid {self.metric} {valid['mean']:.4f}{marker}")
        self.save_checkpoint()

    def _write_epoch_files(self, routes: dict[int, np.ndarray]) -> None:
        lines = "".join(json.dumps(r, default=float) + "\n" for r in self.state.history)
        atomic_write_text(self.run.file("metrics.jsonl"), lines)
        history_path = self.run.file("routing_history.safetensors")
        tensors = {}
        if history_path.exists():
            from safetensors.torch import load_file

            try:
                tensors = {k: v for k, v in load_file(str(history_path)).items() if int(k.split("/")[0][5:]) < self.state.epoch}
            except Exception:
                tensors = {}
        for layer, matrix in routes.items():
            tensors[f"epoch{self.state.epoch:04d}/layer{layer}"] = torch.from_numpy(np.ascontiguousarray(matrix))
        if tensors:
            write_safetensors(history_path, tensors, {"format": "cft-routing-history", "tasks": self.model.spec.tasks})

    # --------------------------------------------------------------- the end

    def finish(self) -> dict:
        recipe, model = self.recipe, self.model
        model.load_state_dict(self.best_state, strict=False)
        ev = recipe.eval
        valid = evaluate_split(model, self.dataset, "valid", self.metric, ev.batch_size, self.device, self.dist, self.amp)
        test = evaluate_split(model, self.dataset, "test", self.metric, ev.batch_size, self.device, self.dist, self.amp)
        state = self.state
        summary = {
            "metric": self.metric,
            "best_epoch": state.best_epoch + 1,
            "epochs_run": state.epoch,
            "valid": {"mean": valid["mean"], "per_task": valid["per_task"]},
            "test": {"mean": test["mean"], "per_task": test["per_task"]},
            "params": model.parameter_counts(),
            "tasks": list(self.dataset.tasks),
            "seconds": {"featurise": self.featurise_seconds, "data": self.data_seconds, "train": state.train_seconds},
            "graphs_per_second": state.graphs_seen * self.dist.world_size / state.train_seconds if state.train_seconds else None,
            "skipped_smiles": len(self.dataset.skipped),
            "backbone": self.backbone_info,
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "cft_version": __version__,
        }
        summary["params"]["trainable_fraction"] = summary["params"]["trainable"] / summary["params"]["total"]
        if self.dist.is_main:
            model.cpu()
            if not model.freeze_backbone:
                save_backbone(model.backbone, self.run.file("backbone.safetensors"), info={"source": "fine-tuned", **self.backbone_info})
            data_meta = {**self.dataset.identity, "config": recipe.data.model_dump(mode="json")}
            metrics_meta = {"metric": self.metric, "best_epoch": state.best_epoch + 1, "valid": valid["mean"], "test": test["mean"]}
            provenance = {"kind": "trained", "seed": recipe.seed, **({"init": self.init_info} if self.init_info else {})}
            save_bundle(self.run.file("bundle.safetensors"), model, data=data_meta, metrics=metrics_meta, provenance=provenance)
            atomic_write_json(self.run.file("summary.json"), summary)
            state.finished = True
            self.save_checkpoint()
            model.to(self.device)
        return summary


def train_recipe(
    recipe: Recipe,
    output_dir: Path,
    data_root: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: Optional[str] = None,
    dist: Optional[DistContext] = None,
    resume_command: str = "",
    dataset: Optional[MolDataset] = None,
) -> dict:
    """Train a recipe into `output_dir`; returns the summary (also written to summary.json).
    `dataset` replaces loading the recipe's data (benchmarks build theirs in memory)."""
    dist = dist or single()
    run = RunFolder(output_dir)
    target = pick_device(device or recipe.train.device, dist.local_rank)
    # refusals first, nothing written yet; a refusal on rank 0 stops every rank
    dist.main_first(lambda: run.check(recipe, resume=resume, overwrite=overwrite), target)
    trainer = Trainer(recipe, run, data_root, target, dist, resume_command)
    fresh = False
    try:
        trainer.load_inputs(resume, dataset)  # bad data / prior / backbone / init bundle: refused before any write
        mode = dist.main_first(lambda: run.prepare(recipe, resume=resume, overwrite=overwrite), target)
        fresh = dist.is_main and mode != "resume"
        trainer.setup(resume)
    except BaseException as exc:
        if fresh and dist.is_main:
            run.discard()  # a new run that failed before training leaves nothing behind
        if isinstance(exc, KeyboardInterrupt):
            if resume and not fresh:
                raise TrainingInterrupted(f"Interrupted before training resumed; the run folder is unchanged. Resume with: {resume_command}") from None
            raise TrainingInterrupted(f"Interrupted before training started; nothing was kept in {run.path}. Run the same command again to start.") from None
        raise
    if trainer.state.finished and run.file("summary.json").exists():
        info(f"{run.path} is already finished; its summary is unchanged.")
        return json.loads(run.file("summary.json").read_text())
    trainer.run_epochs()
    try:
        return trainer.finish()
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"Interrupted while writing the results; every epoch is saved. Resume with: {resume_command}") from None
