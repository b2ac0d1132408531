"""Running a sweep's variants as `cft train` subprocesses, several at once (CPU cores, GPUs).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from cft.files.atomic import atomic_write_json
from cft.sweep.folder import RunResult, SweepFolder
from cft.sweep.plan import Plan, Variant

_TERMINAL_WAIT_S = 600.0  # how long interrupted runs get to write their checkpoint


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def visible_gpus(device: str, count: Optional[int] = None, env: Optional[str] = None) -> list[str]:
    """CUDA devices to hand out one per job (as CUDA_VISIBLE_DEVICES values), or [] on CPU, for a
    pinned device (cuda:N) or with fewer than two devices. `count` and `env` default to what
    torch and $CUDA_VISIBLE_DEVICES say; the ids are the parent's own (e.g. 2,3 of a node)."""
    if device not in ("auto", "cuda"):
        return []
    if count is None:
        try:
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:
            return []
    if count < 2:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES") if env is None else env
    ids = [s.strip() for s in env.split(",") if s.strip()] if env else [str(i) for i in range(count)]
    return ids[:count]


def pick_gpu(gpus: list[str], busy: list[Optional[str]]) -> Optional[str]:
    """The device with the fewest running jobs (the first such one); None without devices."""
    if not gpus:
        return None
    return min(gpus, key=lambda g: (busy.count(g), gpus.index(g)))


@dataclass
class _Job:
    variant: Variant
    seed: int
    proc: subprocess.Popen
    log: Any
    record: dict
    started: float
    gpu: Optional[str]
    forwarded: Optional[float] = None  # when SIGINT was forwarded to it


@dataclass
class Progress:
    """What the live display shows: per-run states, updated by the scheduler."""

    plan: Plan
    results: dict[tuple[str, int], RunResult] = field(default_factory=dict)
    started_at: dict[tuple[str, int], float] = field(default_factory=dict)

    def set(self, result: RunResult) -> None:
        self.results[(result.variant.name, result.seed)] = result

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _error_from_log(path: Path, returncode: int) -> str:
    """The user-facing error paragraph of a failed run (`error: ...`), else its last line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    text = text.split("\n=== attempt ")[-1]
    where = text.rfind("error: ")
    if where >= 0 and (where == 0 or text[where - 1] == "\n"):
        message = " ".join(text[where + len("error: "):].split())
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        message = lines[-1] if lines else ""
    message = message[:600]
    exit_what = f"exit code {returncode}" if returncode >= 0 else f"killed by signal {-returncode}"
    return f"{message} ({exit_what})" if message else f"cft train ended with {exit_what}"


class Sweep:
    def __init__(self, plan: Plan, folder: SweepFolder, *, jobs: int, data_root: Optional[str], device: Optional[str],
                 on_change: Callable[[Progress], None], note: Callable[[str], None]):
        self.plan, self.folder, self.jobs = plan, folder, max(1, jobs)
        self.data_root, self.device = data_root, device
        self.on_change, self.note = on_change, note
        self.progress = Progress(plan)
        self.stop_signal: Optional[int] = None
        self.hard_stop = False
        self.threads = max(1, available_cores() // self.jobs)
        self._gpus: Optional[list[str]] = None

    @property
    def gpus(self) -> list[str]:
        if self._gpus is None:  # imports torch: only once there is something to run
            self._gpus = visible_gpus(self.device or self.plan.base.train.device)
        return self._gpus

    # ------------------------------------------------------------ signals

    def _handler(self, signum, frame):
        if self.stop_signal is not None:
            self.hard_stop = True
        self.stop_signal = signum

    @contextlib.contextmanager
    def _signals(self):
        previous = {}
        wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
        try:
            for sig in wanted:
                previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: no handlers
            pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ------------------------------------------------------------ one run

    def _command(self, variant: Variant, seed: int) -> list[str]:
        run_dir = self.folder.run_dir(variant, seed)
        cmd = [sys.executable, "-m", "cft", "train", str(self.folder.variant_dir(variant) / "recipe.yaml"), "--set", f"seed={seed}"]
        if variant.recipe.train.threads is None:
            cmd += ["--set", f"train.threads={self.threads}"]
        cmd += ["--output-dir", str(run_dir)]
        if (run_dir / "recipe.yaml").exists():
            cmd.append("--resume")
        if self.data_root:
            cmd += ["--data-root", self.data_root]
        if self.device:
            cmd += ["--device", self.device]
        return cmd

    def _start(self, variant: Variant, seed: int, running: list[_Job]) -> _Job:
        cmd = self._command(variant, seed)
        threads = variant.recipe.train.threads or self.threads
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
        gpu = pick_gpu(self.gpus, [j.gpu for j in running])
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        log_path = self.folder.log(variant, seed)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8")  # atomic: an append-only log; a crash can only cut its last line
        log.write(f"\n=== attempt {_now()}: {' '.join(cmd)}\n")
        log.flush()
        record = {"status": "running", "variant": variant.name, "seed": seed, "knobs": variant.knobs, "command": cmd,
                  "threads": threads, "cuda_visible_devices": gpu, "started": _now(), "ended": None, "returncode": None, "error": None}
        atomic_write_json(self.folder.record(variant, seed), record)
        # its own session: a Ctrl-C in the terminal reaches only the sweep, which forwards exactly one
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.progress.started_at[(variant.name, seed)] = time.time()
        self.progress.set(RunResult(variant, seed, "running", run_dir=self.folder.run_dir(variant, seed)))
        return _Job(variant, seed, proc, log, record, time.time(), gpu)

    def _finish(self, job: _Job) -> RunResult:
        job.log.close()
        code = job.proc.returncode
        result = self.folder.status(job.variant, job.seed)
        record = {**job.record, "ended": _now(), "returncode": code, "seconds": round(time.time() - job.started, 3)}
        if code == 0 and result.status == "finished":
            record["status"] = "finished"
        elif self.stop_signal is not None:
            record["status"] = "interrupted"
            result = RunResult(job.variant, job.seed, "interrupted", run_dir=result.run_dir)
        else:
            error = _error_from_log(self.folder.log(job.variant, job.seed), code)
            record.update(status="failed", error=error)
            result = RunResult(job.variant, job.seed, "failed", error=error, run_dir=result.run_dir)
        atomic_write_json(self.folder.record(job.variant, job.seed), record)
        self.progress.set(result)
        return result

    # ------------------------------------------------------------ the loop

    def run(self, on_result: Callable[[RunResult], None]) -> None:
        todo = []
        for variant, seed in self.plan.runs():
            result = self.folder.status(variant, seed)
            self.progress.set(result if result.status == "finished" else RunResult(variant, seed, "pending", run_dir=result.run_dir))
            if result.status != "finished":
                todo.append((variant, seed))
        # the first run goes alone until it has its data and backbone (both cached on disk), so
        # J jobs do not featurise the same dataset or pretrain the same backbone J times
        warm = len(todo) < len(self.plan.runs())
        running: list[_Job] = []
        self.on_change(self.progress)
        with self._signals(), self._no_orphans(running):
            while (todo and self.stop_signal is None) or running:
                if self.stop_signal is not None:
                    self._forward(running)
                capacity = self.jobs if warm else 1
                while todo and self.stop_signal is None and len(running) < capacity:
                    variant, seed = todo.pop(0)
                    job = self._start(variant, seed, running)
                    running.append(job)
                    self.note(f"started {variant.label}, seed {seed}" + (f" on GPU {job.gpu}" if job.gpu else ""))
                    self.on_change(self.progress)
                for job in list(running):
                    if job.proc.poll() is None:
                        continue
                    running.remove(job)
                    warm = True
                    result = self._finish(job)
                    on_result(result)
                    self.on_change(self.progress)
                if not warm and any(self._has_started_training(j) for j in running):
                    warm = True
                time.sleep(0.2)
        self.on_change(self.progress)

    @contextlib.contextmanager
    def _no_orphans(self, running: list[_Job]):
        """If the sweep itself fails, its runs (in their own sessions) must not train on unattended."""
        try:
            yield
        except BaseException:
            for job in running:
                with contextlib.suppress(ProcessLookupError):
                    job.proc.send_signal(signal.SIGINT)
            deadline = time.time() + 30
            for job in running:
                try:
                    job.proc.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(job.proc.pid, signal.SIGKILL)
            raise

    def _has_started_training(self, job: _Job) -> bool:
        run_dir = self.folder.run_dir(job.variant, job.seed)
        return any((run_dir / name).exists() for name in ("backbone.safetensors", "backbone_start.safetensors", "metrics.jsonl"))

    def _forward(self, running: list[_Job]) -> None:
        """Ask every run to checkpoint and stop (SIGINT, as a Ctrl-C would); kill them on a second
        signal or when they take too long."""
        for job in running:
            if job.proc.poll() is not None:
                continue
            if self.hard_stop or (job.forwarded is not None and time.time() - job.forwarded > _TERMINAL_WAIT_S):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.proc.pid, signal.SIGKILL)
            elif job.forwarded is None:
                with contextlib.suppress(ProcessLookupError):
                    job.proc.send_signal(signal.SIGINT)
                job.forwarded = time.time()
