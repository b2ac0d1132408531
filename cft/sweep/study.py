"""A sweep's queue is an Optuna study: its storage, its trials, their heartbeat and their retries.

`cft ablate` enqueues every run (variant x seed) of its plan as a WAITING trial of one study and
every process on every machine that runs the same command pulls the next WAITING trial; the
storage makes a pull atomic (a WAITING -> RUNNING state change that only one process can win), so
each run is trained once. `cft hpopt` lets Optuna's sampler propose the trials instead.

Storage: an SQLite file in the sweep folder by default (`study.db`), or any SQLAlchemy database URL
(`--storage postgresql://...`) shared by many machines. Both are Optuna's RDBStorage, which keeps a
heartbeat per RUNNING trial: a trial whose process died (machine lost, SIGKILL) stops beating, and
after the grace period the next process that looks at the study marks it FAIL and Optuna's
retry callback enqueues a copy (same params and user attributes), which a worker then pulls.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from cft.errors import CftError

STUDY_FILE = "study.db"
RUN_ATTR = "cft_run"  # the user attribute that names a trial's run: "<variant>/seed-<S>"


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds; CFT_SWEEP_HEARTBEAT=I,G changes them (tests)."""
    text = os.environ.get("CFT_SWEEP_HEARTBEAT", "")
    try:
        interval, grace = (int(x) for x in text.split(","))
        if interval > 0 and grace > interval:
            return interval, grace
    except ValueError:
        pass
    return 20, 90


def _quiet_optuna():
    import optuna

    # cft reports failed and interrupted trials itself (one paragraph); Optuna's warnings about them carry tracebacks
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(storage: Optional[str], folder: Path) -> str:
    return storage if storage else f"sqlite:///{(Path(folder).resolve() / STUDY_FILE).as_posix()}"


def open_storage(storage: Optional[str], folder: Path, *, create: bool = True):
    """Optuna's RDBStorage for `--storage URL` (or the sweep folder's SQLite file), with the
    heartbeat and the retry of stale trials. A bad URL or a missing database driver is a CftError."""
    optuna = _quiet_optuna()
    url = storage_url(storage, folder)
    if "://" not in url:
        raise CftError(
            f"--storage {storage!r} is not a database URL.",
            hint="Give an SQLAlchemy URL such as sqlite:////shared/sweeps/study.db or postgresql://user:password@host/dbname, or leave --storage out (a study.db in the sweep folder).",
        )
    if url.startswith("sqlite:///") and not create:
        path = Path(url[len("sqlite:///"):])
        if not path.exists():
            return None
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    interval, grace = heartbeat_settings()
    kwargs: dict[str, Any] = {"heartbeat_interval": interval, "grace_period": grace}
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if retry is not None:  # optuna >= 4.9 names it for what it does
        kwargs["heartbeat_stale_trial_callback"] = retry()
    else:
        kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
    except ImportError as exc:
        raise CftError(f"--storage {_redact(url)}: the database driver is not installed ({exc}).",
                       hint="Install the driver for that database, e.g. pip install psycopg2-binary for postgresql://.") from None
    except Exception as exc:  # sqlalchemy: ArgumentError (bad URL), OperationalError (cannot connect)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CftError(f"--storage {_redact(url)}: cannot open the database ({first}).",
                       hint="Check the URL, that the database server is reachable from this machine and that the user may create tables.") from None


def _redact(url: str) -> str:
    """The URL without its password (it goes into error messages)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def load_or_create(storage, name: str, direction: str, *, create: bool = True, sampler=None):
    """The study `name` in `storage`; created (with `direction`) when missing and `create`, else None."""
    optuna = _quiet_optuna()
    if create:
        return optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True, sampler=sampler)
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        return None


@dataclass
class Pulled:
    trial_id: int
    number: int
    user_attrs: dict
    params: dict


class Queue:
    """The study's WAITING trials as a work queue (ablate)."""

    def __init__(self, study, storage):
        self.study, self.storage = study, storage
        self.study_id = storage.get_study_id_from_name(study.study_name)

    def trials(self, states: Optional[Iterable] = None) -> list:
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=tuple(states) if states else None)

    def waiting(self) -> int:
        from optuna.trial import TrialState

        return len(self.trials((TrialState.WAITING,)))

    def pop(self) -> Optional[Pulled]:
        """The oldest WAITING trial, now RUNNING and ours (the storage's WAITING -> RUNNING change
        succeeds for one process only). A trial whose run is already finished or running under a
        lower trial number (two processes enqueued it at the same moment) is failed as a duplicate."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        for trial in self.trials((TrialState.WAITING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            try:
                if not self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    continue
            except UpdateFinishedTrialError:
                continue
            key = trial.user_attrs.get(RUN_ATTR)
            if key is not None:
                others = [t for t in self.trials((TrialState.COMPLETE, TrialState.RUNNING))
                          if t.number != trial.number and t.user_attrs.get(RUN_ATTR) == key and not t.user_attrs.get("duplicate_of")]
                first = [t for t in others if t.state == TrialState.COMPLETE or t.number < trial.number]
                if first:
                    self.storage.set_trial_user_attr(trial_id, "duplicate_of", first[0].number)
                    self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
                    continue
            return Pulled(trial_id, trial.number, dict(trial.user_attrs), dict(trial.params))
        return None

    def beat(self, trial_ids: Iterable[int]) -> None:
        for trial_id in trial_ids:
            self.storage.record_heartbeat(trial_id)

    def fail_stale(self) -> None:
        """Trials whose process stopped beating: FAIL, and a WAITING copy enqueued (Optuna's retry callback)."""
        optuna = _quiet_optuna()
        optuna.storages.fail_stale_trials(self.study)

    def finish(self, trial_id: int, *, value: Optional[float], attrs: dict[str, Any]) -> None:
        from optuna.trial import TrialState

        for k, v in attrs.items():
            self.storage.set_trial_user_attr(trial_id, k, _jsonable(v))
        if value is not None:
            self.storage.set_trial_state_values(trial_id, state=TrialState.COMPLETE, values=[float(value)])
        else:
            self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)

    def enqueue(self, user_attrs: dict[str, Any]) -> None:
        self.study.enqueue_trial({}, user_attrs=_jsonable(user_attrs))

    def add_complete(self, value: float, user_attrs: dict[str, Any]) -> None:
        optuna = _quiet_optuna()
        self.study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=float(value), user_attrs=_jsonable(user_attrs)))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def is_duplicate(trial) -> bool:
    return bool(trial.user_attrs.get("duplicate_of") is not None)
