"""A deterministic interruption for CLI tests: a signal sent at a given optimiser step.

`signal_at_step_env(folder, step, ...)` writes a `sitecustomize.py` into `folder` and returns the
environment that makes every Python started with it (the `cft` CLI and, for a sweep, its
`cft train` children) check its command line at start-up; a process whose command line contains
every `argv_has` string and none of `argv_lacks`, in an environment with the `env_has` values
(e.g. `LOCAL_RANK=0`: one rank of a torchrun world), registers a global optimiser post-step hook
(`torch.optim.optimizer.register_optimizer_step_post_hook`) that, after its `step`-th optimiser
step, sends `sig` to itself or to its parent. With `wait_for_sigint`, the process then waits (up
to 120 s) until the SIGINT the parent forwards has reached cft's handler, so no run can finish
before the interruption lands, however fast the machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

_SITECUSTOMIZE = '''
import json, os, sys

_SPEC = json.loads(os.environ.get("CFT_TEST_SIGNAL_AT_STEP") or "null")


def _matches(spec):
    argv = " ".join(sys.argv)
    return (all(s in argv for s in spec["argv_has"]) and not any(s in argv for s in spec["argv_lacks"])
            and all(os.environ.get(k) == v for k, v in spec["env_has"].items()))


if _SPEC and _matches(_SPEC):
    import signal, time

    from torch.optim.optimizer import register_optimizer_step_post_hook

    _steps = [0]

    def _cft_handler_saw_sigint():
        handler = signal.getsignal(signal.SIGINT)
        return bool(getattr(getattr(handler, "__self__", None), "requested", False))

    def _hook(optimizer, args, kwargs):
        _steps[0] += 1
        if _steps[0] != _SPEC["step"]:
            return
        target = os.getpid() if _SPEC["target"] == "self" else os.getppid()
        with open(_SPEC["log"], "a") as fh:
            record = {"pid": os.getpid(), "rank": os.environ.get("RANK"), "step": _steps[0], "signal": _SPEC["signal"], "to": _SPEC["target"]}
            fh.write(json.dumps(record) + "\\n")
        os.kill(target, getattr(signal, _SPEC["signal"]))
        if _SPEC["wait_for_sigint"]:
            deadline = time.time() + 120
            while time.time() < deadline and not _cft_handler_saw_sigint():
                time.sleep(0.02)

    register_optimizer_step_post_hook(_hook)
'''


def signal_at_step_env(folder: Path, step: int, sig: str = "SIGINT", *, target: str = "self", argv_has: tuple[str, ...] = ("train",),
                       argv_lacks: tuple[str, ...] = ("--resume",), env_has: dict[str, str] | None = None,
                       wait_for_sigint: bool = False) -> dict[str, str]:
    """Environment additions for a subprocess; the hook's firings are logged to `folder/fired.jsonl`."""
    assert target in ("self", "parent")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    spec = {"step": step, "signal": sig, "target": target, "argv_has": list(argv_has), "argv_lacks": list(argv_lacks),
            "env_has": dict(env_has or {}), "wait_for_sigint": wait_for_sigint, "log": str(folder / "fired.jsonl")}
    path = os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"PYTHONPATH": path, "CFT_TEST_SIGNAL_AT_STEP": json.dumps(spec)}


def fired(folder: Path) -> list[dict]:
    log = folder / "fired.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
