"""Running a sweep's runs as `cft train` subprocesses, several at once (CPU cores, GPUs), pulled
from the sweep's Optuna study (cft.sweep.study), so that processes on several machines share one sweep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
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
from cft.sweep.study import heartbeat_settings

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
    trial_id: int = -1  # the study's trial this run is
    attrs: dict = field(default_factory=dict)  # the trial's user attributes (enqueued again after an interrupt)
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


def train_command(recipe_file: Path, seed: int, run_dir: Path, *, threads: Optional[int], data_root: Optional[str],
                  device: Optional[str]) -> list[str]:
    """`python -m cft train RECIPE --set seed=S [--set train.threads=T] -o RUN [--resume] ...`; --resume
    when the run folder already holds a run (it continues from its checkpoint)."""
    cmd = [sys.executable, "-m", "cft", "train", str(recipe_file), "--set", f"seed={seed}"]
    if threads is not None:
        cmd += ["--set", f"train.threads={threads}"]
    cmd += ["--output-dir", str(run_dir)]
    if (run_dir / "recipe.yaml").exists():
        cmd.append("--resume")
    if data_root:
        cmd += ["--data-root", data_root]
    if device:
        cmd += ["--device", device]
    return cmd


def start_train(cmd: list[str], log_path: Path, threads: int, gpu: Optional[str]) -> tuple[subprocess.Popen, Any]:
    """Start one `cft train` in its own session (a Ctrl-C in the terminal reaches only the sweep,
    which forwards exactly one), its output appended to `log_path`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", encoding="utf-8")  # atomic: an append-only log; a crash can only cut its last line
    log.write(f"\n=== attempt {_now()}: {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return proc, log


class StopSignals:
    """SIGINT/SIGTERM/SIGHUP set `stop_signal` (a second one sets `hard_stop`) instead of raising."""

    def __init__(self):
        self.stop_signal: Optional[int] = None
        self.hard_stop = False

    def _handler(self, signum, frame):
        if self.stop_signal is not None:
            self.hard_stop = True
        self.stop_signal = signum

    @contextlib.contextmanager
    def installed(self):
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


class Sweep:
    """Pulls the plan's runs from the study (`Queue`), J at a time on this machine, each a `cft train`
    subprocess; tells the study each run's outcome. A leader (not `worker`) also waits for runs that
    other machines are training, so that its tables are complete; a worker stops when nothing is waiting."""

    def __init__(self, plan: Plan, folder: SweepFolder, queue, *, jobs: int, data_root: Optional[str], device: Optional[str],
                 on_change: Callable[[Progress], None], note: Callable[[str], None], worker: bool = False,
                 outcomes: Callable[[], dict[tuple[str, int], RunResult]] = dict):
        self.plan, self.folder, self.queue, self.jobs = plan, folder, queue, max(1, jobs)
        self.data_root, self.device, self.worker = data_root, device, worker
        self.on_change, self.note, self.outcomes = on_change, note, outcomes
        self.progress = Progress(plan)
        self.signals = StopSignals()
        self.threads = max(1, available_cores() // self.jobs)
        self._gpus: Optional[list[str]] = None
        self._by_name = {v.name: v for v in plan.variants}

    @property
    def stop_signal(self) -> Optional[int]:
        return self.signals.stop_signal

    @property
    def hard_stop(self) -> bool:
        return self.signals.hard_stop

    @property
    def gpus(self) -> list[str]:
        if self._gpus is None:  # imports torch: only once there is something to run
            self._gpus = visible_gpus(self.device or self.plan.base.train.device)
        return self._gpus

    # ------------------------------------------------------------ one run

    def _start(self, pulled, running: list[_Job]) -> Optional[_Job]:
        variant = self._by_name.get(pulled.user_attrs.get("variant"))
        seed = pulled.user_attrs.get("seed")
        if variant is None or seed not in self.plan.seeds:  # checked when the worker joined: a study edited meanwhile
            self.queue.finish(pulled.trial_id, value=None, attrs={"error": "not a run of this sweep's plan", "outcome": "failed"})
            return None
        run_dir = self.folder.run_dir(variant, seed)
        local = self.folder.status(variant, seed)
        if local.status == "finished" and local.summary:  # trained by a process that died before it could tell the study
            from cft.sweep.results import summary_attrs

            summary = summary_attrs(local.summary)
            self.queue.finish(pulled.trial_id, value=summary["valid"]["mean"],
                              attrs={"summary": summary, "run_dir": str(run_dir), "host": socket.gethostname(), "outcome": "finished"})
            self.progress.set(local)
            return None
        threads = variant.recipe.train.threads or self.threads
        cmd = train_command(self.folder.variant_dir(variant) / "recipe.yaml", seed, run_dir,
                            threads=None if variant.recipe.train.threads else self.threads, data_root=self.data_root, device=self.device)
        gpu = pick_gpu(self.gpus, [j.gpu for j in running])
        record = {"status": "running", "variant": variant.name, "seed": seed, "knobs": variant.knobs, "command": cmd, "trial": pulled.number,
                  "threads": threads, "cuda_visible_devices": gpu, "started": _now(), "ended": None, "returncode": None, "error": None}
        atomic_write_json(self.folder.record(variant, seed), record)
        proc, log = start_train(cmd, self.folder.log(variant, seed), threads, gpu)
        self.queue.beat([pulled.trial_id])
        self.progress.started_at[(variant.name, seed)] = time.time()
        self.progress.set(RunResult(variant, seed, "running", run_dir=run_dir))
        return _Job(variant, seed, proc, log, record, time.time(), gpu, trial_id=pulled.trial_id, attrs=pulled.user_attrs)

    def _finish(self, job: _Job) -> RunResult:
        from cft.sweep.results import summary_attrs

        job.log.close()
        code = job.proc.returncode
        result = self.folder.status(job.variant, job.seed)
        record = {**job.record, "ended": _now(), "returncode": code, "seconds": round(time.time() - job.started, 3)}
        attrs = {"run_dir": str(result.run_dir), "host": socket.gethostname(), "returncode": code}
        if code == 0 and result.status == "finished":
            record["status"] = "finished"
            summary = summary_attrs(result.summary or {})
            self.queue.finish(job.trial_id, value=summary["valid"]["mean"], attrs={**attrs, "summary": summary, "outcome": "finished"})
        elif self.stop_signal is not None:
            record["status"] = "interrupted"
            result = RunResult(job.variant, job.seed, "interrupted", run_dir=result.run_dir)
            # the run keeps its checkpoint; its copy waits in the study for the next process (here or elsewhere)
            self.queue.finish(job.trial_id, value=None, attrs={**attrs, "outcome": "interrupted"})
            self.queue.enqueue(job.attrs)
        else:
            error = _error_from_log(self.folder.log(job.variant, job.seed), code)
            record.update(status="failed", error=error)
            result = RunResult(job.variant, job.seed, "failed", error=error, run_dir=result.run_dir)
            self.queue.finish(job.trial_id, value=None, attrs={**attrs, "outcome": "failed", "error": error})
        atomic_write_json(self.folder.record(job.variant, job.seed), record)
        self.progress.set(result)
        return result

    # ------------------------------------------------------------ the loop

    def run(self, on_result: Callable[[RunResult], None]) -> None:
        outcomes = self.outcomes()
        for variant, seed in self.plan.runs():
            self.progress.set(outcomes.get((variant.name, seed)) or RunResult(variant, seed, "pending"))
        # the first run goes alone until it has its data and backbone (both cached on disk), so
        # J jobs do not featurise the same dataset or pretrain the same backbone J times
        warm = any(r.status == "finished" for r in self.progress.results.values())
        interval, _grace = heartbeat_settings()
        running: list[_Job] = []
        last_beat = last_poll = last_check = 0.0
        empty = False
        self.on_change(self.progress)
        with self.signals.installed(), self._no_orphans(running):
            while True:
                now = time.time()
                if self.stop_signal is not None:
                    self._forward(running)
                if now - last_beat >= interval:
                    self.queue.beat(j.trial_id for j in running)
                    self.queue.fail_stale()  # runs whose process died anywhere are failed and enqueued again
                    last_beat = now
                capacity = self.jobs if warm else 1
                if self.stop_signal is None and len(running) < capacity and (not empty or now - last_poll >= 2.0):
                    last_poll, empty = now, False
                    while self.stop_signal is None and len(running) < capacity:
                        pulled = self.queue.pop()
                        if pulled is None:
                            empty = True
                            break
                        job = self._start(pulled, running)
                        if job is None:
                            continue
                        running.append(job)
                        self.note(f"started {job.variant.label}, seed {job.seed}" + (f" on GPU {job.gpu}" if job.gpu else ""))
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
                if not running and (self.stop_signal is not None or (empty and self.worker)):
                    break
                if not running and empty and now - last_check >= 2.0:
                    # nothing waits: done, unless runs are still in flight on other machines (wait for them)
                    last_check = now
                    outcomes = self.outcomes()
                    for variant, seed in self.plan.runs():
                        result = outcomes.get((variant.name, seed))
                        if result is not None:
                            self.progress.set(result)
                    self.on_change(self.progress)
                    if all(r.status in ("finished", "failed") for r in (outcomes.get((v.name, s)) for v, s in self.plan.runs()) if r is not None) \
                            and all((v.name, s) in outcomes for v, s in self.plan.runs()):
                        break
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
