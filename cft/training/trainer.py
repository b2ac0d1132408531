"""`cft train`: the training loop of one recipe, and `train_recipe`, which runs it into a run folder.

OGB protocol: the model is selected on the validation metric; the reported test score is the
test score of the best validation epoch. Runs are seeded and deterministic on CPU at a fixed
thread count; the checkpoint holds everything that determines the rest of the run (model,
optimiser, schedule, RNG state, position in the epoch), so `--resume` after a crash or Ctrl-C
ends with the same metrics and the same bundle bytes as an uninterrupted run.

The life of a run: `load_inputs` reads and checks every input (nothing is written yet), the
run folder is prepared, `Trainer` sets up backbone, model, optimiser and schedule (resuming
from the checkpoint when asked), `run_epochs` trains, `finish` writes bundle and summary.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from cft import __version__
from cft.console import info, progress_bar, warn
from cft.data.dataset import MolDataset, load_dataset
from cft.errors import CftError, TrainingInterrupted
from cft.files.atomic import atomic_write_json
from cft.files.backbone import save_backbone
from cft.files.bundle import BundleInfo, save_bundle
from cft.files.runfolder import RunFolder
from cft.metrics import better
from cft.nn.frozen import PRECISION_NAMES, bf16_frozen_products
from cft.nn.model import CftModel
from cft.prior.sources import build_relation
from cft.recipe.schema import Recipe, TrainConfig
from cft.training.average import WeightAverage
from cft.training.backbones import BackboneChoice, choose_backbone, obtain_backbone
from cft.training.build import build_training_model, read_init_bundle, resolve_metric, set_trainable
from cft.training.checkpoint import read_checkpoint, write_checkpoint
from cft.training.distributed import DistContext, pick_device, single
from cft.training.inference import autocast, cpu_computes_bf16, evaluate_split, frozen_bf16_wanted
from cft.training.optim import make_optimizer, make_scheduler
from cft.training.prefix import PrefixCache, StoreBatches, as_is, prefix_cache_for
from cft.training.seeding import restore_rng_state, use_deterministic_kernels
from cft.training.signals import Interrupt
from cft.training.tensorboard import TensorBoardLog


@dataclass
class EpochLoss:
    """Running sums of the current epoch's losses (summed over processes at the end of the epoch)."""

    task: float = 0.0
    reg: float = 0.0
    total: float = 0.0
    batches: int = 0

    def add(self, task: float, reg: float, total: float) -> None:
        self.task, self.reg, self.total, self.batches = self.task + task, self.reg + reg, self.total + total, self.batches + 1

    def as_list(self) -> list[float]:
        return [self.task, self.reg, self.total, self.batches]

    @classmethod
    def from_list(cls, values: list[float]) -> EpochLoss:
        task, reg, total, batches = values
        return cls(task, reg, total, int(batches))


class PendingLosses:
    """Loss sums of the steps since the last check, kept on the device. Reading them is a host
    synchronisation, so on an accelerator it happens every `every` steps (and at the end of an
    epoch, before a checkpoint); on a CPU it costs nothing and happens every step, before the
    update. Summed in float64, in step order: the same sums as adding the floats one by one."""

    def __init__(self, device: torch.device, every: int):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.every, self.count, self.first = every, 0, 0

    def add(self, task: torch.Tensor, reg: torch.Tensor, total: torch.Tensor, batch: int) -> bool:
        """Add one step's losses (batch: its 1-based number in the epoch); True when a check is due."""
        if self.count == 0:
            self.first = batch
        self.sums += torch.stack([task.detach(), reg.detach(), total.detach()]).to(torch.float64)
        self.count += 1
        return self.count >= self.every


# steps between two host reads of the loss on an accelerator (on a CPU: every step)
LOSS_CHECK_EVERY = 50


@dataclass
class LoopState:
    """Where the loop stands; saved in every checkpoint (as plain values: loaded with weights_only)."""

    epoch: int = 0  # next epoch to run (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already done (mid-epoch checkpoint)
    step: int = 0
    best_metric: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    train_seconds: float = 0.0
    graphs_seen: int = 0
    history: list = field(default_factory=list)
    epoch_loss: EpochLoss = field(default_factory=EpochLoss)
    finished: bool = False

    def to_dict(self) -> dict:
        return {**self.__dict__, "epoch_loss": self.epoch_loss.as_list()}

    @classmethod
    def from_dict(cls, raw: dict) -> LoopState:
        return cls(**{**raw, "epoch_loss": EpochLoss.from_list(raw["epoch_loss"])})


@dataclass
class RunInputs:
    """Every input of a run, read and checked before anything is written: a bad input leaves the
    output folder untouched."""

    dataset: MolDataset
    metric: str
    backbone: BackboneChoice
    relation: np.ndarray | None = None  # the prior of a fresh model
    init_bundle: BundleInfo | None = None  # the header of train.init_bundle
    data_seconds: float = 0.0


def load_inputs(recipe: Recipe, run: RunFolder, data_root: Path, resume: bool, dataset: MolDataset | None = None) -> RunInputs:
    """Data, metric, prior or init bundle, and the backbone's source. `dataset` replaces loading
    the recipe's data (benchmarks build theirs in memory)."""
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    use_deterministic_kernels(recipe.train.deterministic)  # before the backbone's pretraining, too
    started = time.perf_counter()
    dataset = dataset if dataset is not None else load_dataset(recipe.data, data_root, recipe.seed)
    data_seconds = time.perf_counter() - started
    metric = resolve_metric(recipe, dataset)
    init_bundle = read_init_bundle(recipe, dataset) if recipe.train.init_bundle else None
    relation = None if init_bundle is not None else build_relation(recipe.prior, dataset)
    backbone = choose_backbone(recipe, run, resume)
    return RunInputs(dataset, metric, backbone, relation, init_bundle, data_seconds)


def batch_loss(model: CftModel, logits: torch.Tensor, routes: dict[int, torch.Tensor], y: torch.Tensor, train: TrainConfig) -> tuple[torch.Tensor, ...]:
    """(task loss, regulariser, loss) of one training batch, the loss minimised:

        L = task(logits, y) + lambda reg(routes) + beta H(routes) + gamma (1 - balance(routes)),

    lambda, beta, gamma = train.reg_strength, route_entropy, route_balance (a term at weight 0 is not
    computed); reg the prior consistency (`Router.regularizer`), H the routes' normalised entropy,
    balance that of the mean route. logits [B, T] (any float dtype; the loss is taken in fp32), y [B, T]."""
    lam, beta, gamma = train.reg_strength, train.route_entropy, train.route_balance
    task_loss = model.task_loss(logits.float(), y)
    reg = model.router.regularizer(routes) if lam > 0 else task_loss.new_zeros(())
    loss = task_loss + lam * reg
    if beta > 0:
        loss = loss + beta * model.router.normalised_entropy(routes)
    if gamma > 0:
        loss = loss + gamma * (1.0 - model.router.normalised_balance(routes))
    return task_loss, reg, loss


class Trainer:
    """Set up from a recipe and its checked inputs (torchtune's recipe shape: backbone, model,
    optimiser and schedule are built in `__init__`; `run_epochs` trains; `finish` writes)."""

    def __init__(
        self, recipe: Recipe, run: RunFolder, inputs: RunInputs, data_root: Path, device: torch.device, dist: DistContext,
        resume: bool = False, resume_command: str = "",
    ):
        self.recipe, self.run, self.inputs, self.device, self.dist = recipe, run, inputs, device, dist
        self.dataset, self.metric = inputs.dataset, inputs.metric
        self.resume_command = resume_command
        self.amp = recipe.train.bf16 and device.type == "cuda"  # evaluation (and training) on CUDA
        # the training steps: also on a CPU with native bf16 products when the recipe asks for it
        self.train_amp = self.amp or (recipe.train.bf16_cpu and device.type == "cpu" and cpu_computes_bf16())
        # the frozen backbone's products in bf16 while training (train.frozen_bf16); autocast, where
        # on, already makes every product bf16
        self.frozen_bf16 = False if self.train_amp else frozen_bf16_wanted(recipe.train.frozen_bf16, device)
        self.unscored = self.dataset.unscorable(self.metric)
        if dist.is_main:
            run.write_skipped(self.dataset.skipped)
            if self.dataset.skipped:
                info(f"the {len(self.dataset.skipped)} unparsable SMILES of the training data are listed in {run.file('skipped_smiles.csv')}")
            run.write_dropped_tasks(self.dataset.dropped_tasks)
            run.write_splits(self.dataset.chemprop_splits(), self.dataset.split_column())
            if self.unscored:
                names = list(self.unscored)
                warn(f"{len(names)} task(s) cannot be scored by {self.metric} on valid or test and are left out of that mean: "
                     f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''} (reasons under \"unscored\" in summary.json).")
        backbone, self.backbone_info = obtain_backbone(inputs.backbone, recipe, run, data_root, device, dist)
        self.model, self.init_info = build_training_model(recipe, self.dataset, backbone, inputs.relation, inputs.init_bundle)
        set_trainable(self.model, recipe)
        self.model.to(device)
        self.train_model = self._wrap(self.model)
        self.optimizer = make_optimizer(self.model, recipe)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]  # what the gradient clipping reads, once
        # train.ema: validation, the best epoch and the bundle take the averaged trainable weights
        self.average = WeightAverage(self.model, recipe.train.ema) if recipe.train.ema else None
        self.steps_per_epoch = math.ceil(math.ceil(len(self.dataset.split["train"]) / dist.world_size) / self.local_batch_size)
        self.scheduler = make_scheduler(self.optimizer, recipe, self.steps_per_epoch)
        self.state = LoopState()
        self.best_state = self._snapshot()
        self.checkpoint_at: tuple[int, int] | None = None  # (epoch, batch) of the checkpoint on disk
        if resume and run.checkpoint.exists():
            self._resume()
        elif resume:
            info(f"{run.path}: no checkpoint yet; starting from the beginning.")
        # TensorBoard events on the main process only; a resumed run drops the events after its checkpoint
        self.tensorboard = TensorBoardLog(run.path, recipe.train.tensorboard if dist.is_main else False, resume_epoch=self.state.epoch)
        started = time.perf_counter()
        # frozen backbone: its layers below the first insertion layer run once per molecule, here
        self.prefix: PrefixCache | None = prefix_cache_for(self.model, self.dataset.store, device, recipe.train.prefix_cache, recipe.train.prefix_cache_bf16)
        self.prefix_seconds = time.perf_counter() - started

    def _wrap(self, model: CftModel):
        wrapped = model
        if self.recipe.train.compile:
            wrapped = torch.compile(wrapped)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=ids, find_unused_parameters=True)
        return wrapped

    @property
    def local_batch_size(self) -> int:
        return max(1, self.recipe.train.batch_size // self.dist.world_size)

    @property
    def _judged_by(self) -> str:
        """What picks the best epoch (train.select_on): the eval metric's name, or "loss"."""
        return "loss" if self.recipe.train.select_on == "loss" else self.metric

    def _judged(self, valid: dict) -> float:
        """The validation number an epoch is judged by: valid["loss"] or the metric's mean."""
        return valid["loss"] if self._judged_by == "loss" else valid["mean"]

    def _precision(self) -> str:
        """How the training steps computed: bf16 autocast, fp32 with the frozen backbone's products
        in bf16 (train.frozen_bf16; only where a frozen GIN MLP ran them), or fp32."""
        if self.train_amp:
            return "bf16 autocast"
        # the products run in the GIN layers from the first insertion layer up (below it: the fp32 prefix)
        frozen = self.model.backbone.spec.arch == "gin" and not any(p.requires_grad for p in self.model.backbone.parameters())
        frozen = frozen and bool(self.model.router.layers)
        return PRECISION_NAMES[self.frozen_bf16 if frozen else False]

    # --------------------------------------------------------------- checkpoints

    def _snapshot(self) -> dict[str, torch.Tensor]:
        skip_backbone = self.model.freeze_backbone
        return {k: v.detach().clone().cpu() for k, v in self.model.state_dict().items() if not (skip_backbone and k.startswith("backbone."))}

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        average = self.average.state_dict() if self.average is not None else None
        write_checkpoint(self.run.checkpoint, self.model, self.optimizer, self.scheduler, self.state.to_dict(), self.best_state, average)
        self.checkpoint_at = (self.state.epoch, self.state.batch_in_epoch)

    def _gather_epoch_loss(self) -> None:
        """Before a mid-epoch checkpoint of a multi-process run (every rank calls it): rank 0, whose
        state is the one saved, takes the loss sums of every rank and the others restart from zero,
        so the epoch's logged loss counts each batch once, interrupted or not."""
        if self.dist.enabled:
            summed = self.dist.all_reduce_sums(self.state.epoch_loss.as_list(), self.device)
            self.state.epoch_loss = EpochLoss.from_list(summed) if self.dist.is_main else EpochLoss()

    def _resume(self) -> None:
        path = self.run.checkpoint
        payload = read_checkpoint(path)
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
            self.state = LoopState.from_dict(payload["state"])
            if not self.dist.is_main:  # rank 0's checkpoint holds the loss sums of every rank (_gather_epoch_loss)
                self.state.epoch_loss = EpochLoss()
            self.best_state = payload["best_state"]
            if self.average is not None:
                self.average.load_state_dict(payload["average"])
            restore_rng_state(payload["rng"])
        except Exception as exc:  # a checkpoint of another model or cft version
            raise CftError(
                f"Checkpoint {path} cannot be resumed from ({type(exc).__name__}: {str(exc)[:200]}).",
                hint="It is damaged or from another cft version; start again with --overwrite.",
            ) from None
        self.checkpoint_at = (self.state.epoch, self.state.batch_in_epoch)
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
        # whole batches sliced from the compact store (the same Batch as PyG's collation, ~9x faster on CPU)
        loader = DataLoader(
            StoreBatches(self.dataset.store, self.dataset.y, order[start_batch * bs :], bs, with_index=self.prefix is not None),
            batch_size=None, shuffle=False, num_workers=recipe.train.num_workers, collate_fn=as_is,
            pin_memory=self.device.type == "cuda",
        )
        pending = PendingLosses(self.device, 1 if self.device.type == "cpu" else LOSS_CHECK_EVERY)
        self.train_model.train()
        epoch_started = time.perf_counter()
        total_batches = math.ceil(len(order) / bs)
        with progress_bar(f"epoch {state.epoch + 1}/{recipe.train.epochs}", total=total_batches) as advance:
            advance(start_batch)
            for batch in loader:
                prefix = self.prefix.take(batch, self.device) if self.prefix is not None else None
                batch = batch.to(self.device, non_blocking=True)
                with autocast(self.device, self.train_amp), bf16_frozen_products(self.frozen_bf16):
                    logits, routes = self._forward(batch, prefix)
                    task_loss, reg, loss = batch_loss(model, logits, routes, batch.y, recipe.train)
                if pending.add(task_loss, reg, loss, state.batch_in_epoch + 1):
                    self._check_losses(pending, advance)  # on a CPU every step, before the update
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.train.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.trainable, recipe.train.grad_clip)
                self.optimizer.step()
                if self.average is not None:
                    self.average.update()
                if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step()
                state.step += 1
                state.batch_in_epoch += 1
                state.graphs_seen += int(batch.num_graphs)
                advance(1)
                if recipe.train.max_steps and state.step >= recipe.train.max_steps:
                    break
                if self.dist.broadcast_flag(interrupt.requested, self.device):
                    self._check_losses(pending, advance)
                    state.train_seconds += time.perf_counter() - epoch_started
                    self._gather_epoch_loss()
                    self.save_checkpoint()
                    raise TrainingInterrupted(
                        f"Interrupted ({interrupt.signal_name or 'SIGINT'}) at epoch {state.epoch + 1}, batch {state.batch_in_epoch}; "
                        f"checkpoint saved in {self.run.checkpoint}. Resume with: {self.resume_command}",
                        exit_code=143 if interrupt.signal_name == "SIGTERM" else 130,
                    )
            self._check_losses(pending, advance)
        state.train_seconds += time.perf_counter() - epoch_started

    def _check_losses(self, pending: PendingLosses, advance) -> None:
        """Read the pending loss sums (one host sync), stop a run whose loss is not finite, and add
        them to the epoch's running sums."""
        if pending.count == 0:
            return
        task, reg, total = pending.sums.tolist()
        if not math.isfinite(total):
            where = pending.first if pending.count == 1 else None
            what = "The training loss became " + (f"{total}" if where else f"{total} in batches {pending.first}-{pending.first + pending.count - 1}")
            self._diverged(what, where)
        e = self.state.epoch_loss
        if pending.count == 1:
            e.add(task, reg, total)
        else:
            e.task, e.reg, e.total, e.batches = e.task + task, e.reg + reg, e.total + total, e.batches + pending.count
        pending.sums.zero_()
        pending.count = 0
        advance(0, loss=e.total / e.batches)

    def _forward(self, batch, prefix=None):
        # through the wrapper (DDP / compiled) so that gradient hooks see the whole graph
        return self.train_model(batch, with_routes=True, prefix=prefix)

    def _diverged(self, what: str, batch: int | None = None) -> None:
        """Stop a run whose loss or weights stopped being finite. The checkpoint on disk is the
        last good state (it is written only at the end of an epoch that stayed finite) and is
        not overwritten; no bundle or summary is written."""
        state = self.state
        where = f"epoch {state.epoch + 1}" + (f", batch {batch}" if batch is not None else "")
        at = self.checkpoint_at
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
        # the weights the epoch is judged by: the averaged ones under train.ema, else the trained ones
        with self.average.applied() if self.average is not None else contextlib.nullcontext():
            with bf16_frozen_products(self.frozen_bf16):  # the final scores (`finish`) are fp32
                valid = evaluate_split(
                    self.model, self.dataset, "valid", self.metric, recipe.eval.batch_size, self.device, self.dist, self.amp, self.prefix,
                    with_loss=self._judged_by == "loss",
                )
            criterion = self._judged(valid)
            improved = better(self._judged_by, criterion, state.best_metric)
            if improved:
                self.best_state = self._snapshot()
            routing_stats, routes = self.model.routing_stats(), self.model.routing_matrices()
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and not math.isnan(criterion):
            self.scheduler.step(criterion)
        acc = self.dist.all_reduce_sums(state.epoch_loss.as_list(), self.device)
        n = max(acc[3], 1)
        if improved:
            state.best_metric, state.best_epoch, state.bad_epochs = criterion, state.epoch, 0
        else:
            state.bad_epochs += 1
        record = {
            "epoch": state.epoch + 1,
            "loss": acc[2] / n,
            "task_loss": acc[0] / n,
            "reg_loss": acc[1] / n,
            f"valid_{self.metric}": valid["mean"],
            **({"valid_loss": valid["loss"]} if "loss" in valid else {}),
            "lr": self.optimizer.param_groups[0]["lr"],
            "step": state.step,
            "seconds": state.train_seconds,
            "routing": routing_stats,
        }
        state.history.append(record)
        state.epoch += 1
        state.batch_in_epoch = 0
        state.epoch_loss = EpochLoss()
        if recipe.train.patience and state.bad_epochs >= recipe.train.patience:
            state.finished = True
            info(f"early stopping: no better valid {self._judged_by} for {recipe.train.patience} epochs")
        if recipe.train.max_steps and state.step >= recipe.train.max_steps:
            state.finished = True
        if self.dist.is_main:
            self.run.write_metrics(state.history)
            self.run.write_routing_history(state.epoch, routes, self.model.spec.tasks)
            self.tensorboard.log_epoch(record, self.metric, valid["per_task"], routes)
            marker = " [green]best[/green]" if improved else ""
            info(f"epoch {record['epoch']:>3}/{recipe.train.epochs}  loss {record['loss']:.4f}  valid {self.metric} {valid['mean']:.4f}{marker}")
        self.save_checkpoint()

    # --------------------------------------------------------------- the end

    def finish(self) -> dict:
        recipe, model = self.recipe, self.model
        self.tensorboard.close()
        model.load_state_dict(self.best_state, strict=False)
        ev = recipe.eval
        valid = evaluate_split(model, self.dataset, "valid", self.metric, ev.batch_size, self.device, self.dist, self.amp, self.prefix)
        test = evaluate_split(model, self.dataset, "test", self.metric, ev.batch_size, self.device, self.dist, self.amp, self.prefix)
        state = self.state
        summary = {
            "metric": self.metric,
            "best_epoch": state.best_epoch + 1,
            "epochs_run": state.epoch,
            "valid": {"mean": valid["mean"], "per_task": valid["per_task"], **({"mae": valid["mae"]} if "mae" in valid else {})},
            "test": {"mean": test["mean"], "per_task": test["per_task"], **({"mae": test["mae"]} if "mae" in test else {})},
            "params": model.parameter_counts(),
            # the routes of the best epoch's weights (those the bundle keeps)
            "routing": {"layers": model.routing_stats(), **{f"deciding_{k}": v for k, v in model.deciding_routes_stats().items()}},
            "tasks": list(self.dataset.tasks),
            "seconds": {"featurise": self.dataset.featurise_seconds, "data": self.inputs.data_seconds, "train": state.train_seconds,
                        "prefix": self.prefix_seconds},
            "graphs_per_second": state.graphs_seen * self.dist.world_size / state.train_seconds if state.train_seconds else None,
            "skipped_smiles": len(self.dataset.skipped),
            "dropped_tasks": len(self.dataset.dropped_tasks),
            "unscored": self.unscored,
            "backbone": self.backbone_info,
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "precision": self._precision(),  # of the training steps
            # the weights validated, chosen and saved: an average over the steps (train.ema) or the last step's
            "weights": {"ema": self.average.decay, "updates": self.average.updates} if self.average is not None else "last step",
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
    device: str | None = None,
    dist: DistContext | None = None,
    resume_command: str = "",
    dataset: MolDataset | None = None,
) -> dict:
    """Train a recipe into `output_dir`; returns the summary (also written to summary.json).
    `dataset` replaces loading the recipe's data (benchmarks build theirs in memory)."""
    dist = dist or single()
    run = RunFolder(output_dir)
    target = pick_device(device or recipe.train.device, dist.local_rank)
    # refusals first, nothing written yet; a refusal on rank 0 stops every rank
    dist.main_first(lambda: run.check(recipe, resume=resume, overwrite=overwrite), target)
    fresh = False
    try:
        inputs = load_inputs(recipe, run, data_root, resume, dataset)  # bad data / prior / backbone / init bundle: refused before any write
        mode = dist.main_first(lambda: run.prepare(recipe, resume=resume, overwrite=overwrite), target)
        fresh = dist.is_main and mode != "resume"
        trainer = Trainer(recipe, run, inputs, data_root, target, dist, resume=resume, resume_command=resume_command)
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
