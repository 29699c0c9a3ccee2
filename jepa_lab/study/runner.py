"""Running studies: one Optuna study shared by any number of workers, each trial one MLflow run.

Grids run through Optuna too: every cell (x seed) is enqueued once, with fixed parameters, when
the study is created, so resume, several workers and trial states work the same for grids and
searches. Every decision that creates or retires a trial (claiming the next trial, counting the
budget, failing a dead worker's trial and re-enqueueing its parameters) happens under one
*claim lock* per study (:func:`jepa_lab.study.storage.claim_lock`): an ``flock`` beside a local
storage file, a PostgreSQL advisory lock otherwise. Hence ``n_trials`` is exact across workers (a
check after the fact, as Optuna's ``MaxTrialsCallback`` does, can overshoot by one trial per
worker), and a grid cell is never run twice. Both locks vanish with their holder, so a crash never
leaves a lock to wait out.

Dead workers: each trial records its worker (host, pid, process start time). A worker that
claims, and a ``run`` that starts, fail every RUNNING trial whose worker is gone from this host,
mark its MLflow run KILLED and re-enqueue its parameters. Workers on other machines share a
PostgreSQL storage, whose Optuna heartbeat fails their dead trials the same way (journal files
have no heartbeat; they serve one machine).

The storage and worker identities live in :mod:`jepa_lab.study.storage`; one trial in
:mod:`jepa_lab.study.trial`; the MLflow parent run and the ``jepa_lab.*`` keys in
:mod:`jepa_lab.study.tracking`; local worker processes in :mod:`jepa_lab.cli.workers`; the study's
results (tables, exports, final artifacts) in :mod:`jepa_lab.study.results`.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import optuna
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from jepa_lab.spec.plan import StudyPlan
from jepa_lab.spec.study import SamplerSpec
from jepa_lab.study.session import Session
from jepa_lab.study.storage import (
    HEARTBEAT_S,
    Storage,
    StorageUnreachable,
    StudyError,
    open_storage,
    worker_alive,
    worker_identity,
)
from jepa_lab.study.tracking import (
    DIGEST,
    FAILED_TRIAL,
    PARENT,
    RETRY_HISTORY,
    RETRY_OF,
    WORKER,
    create_parent,
    end_orphan_runs,
    end_stale_runs,
    log_aggregates,
    metric_name,
)
from jepa_lab.study.trial import Outcome, WorkerOptions, cell_params, record_failure, run_trial
from jepa_lab.track.store import TrackingError, prepare_store

if TYPE_CHECKING:
    from jepa_lab.training.loop import Progress

optuna.logging.set_verbosity(optuna.logging.WARNING)  # jepa-lab reports trials itself

POLL_S = 2.0  # an idle worker re-checks for retried trials this often


# ------------------------------------------------------------------------------ session


def sampler_for(spec: SamplerSpec, stream: int) -> optuna.samplers.BaseSampler:
    """The study's sampler; ``stream`` 0 uses the file's seed, others a seed derived from it
    (each worker and each resumption gets its own, so none replays another's draws)."""
    seed = spec.seed if stream == 0 else (spec.seed * 1_000_003 + stream) % 2**31
    if spec.kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials)
    if spec.kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=spec.population_size)
    if spec.kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.n_startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


def open_session(
    plan: StudyPlan, storage: Storage, uri: str, *, stream: int = 0, create: bool = True
) -> Session:
    """Open the study, creating it, its MLflow experiment and parent run if absent, and retire
    trials of dead workers. Idempotent, and safe from several processes at once.
    ``create=False`` only reads (status, export, plot): the study must exist."""
    session = Session(plan, storage, uri, read_only=not create)

    def on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
        _retry(session, trial, "no heartbeat: its worker stopped beating", failed=True)

    session.optuna_storage = open_storage(storage, on_stale, read_only=not create)
    directions = [o.direction for o in plan.spec.objectives]
    with session.lock():
        names = {s.study_name for s in optuna.get_all_study_summaries(session.optuna_storage)}
        if plan.name not in names and not create:
            raise StudyError(
                f"no study {plan.name!r} in {storage.shown}: start it with "
                f"`jepa-lab run {plan.path}` (or check --storage)"
            )
        if create:
            session.study = optuna.create_study(
                storage=session.optuna_storage,
                study_name=plan.name,
                directions=directions,
                load_if_exists=True,
            )
        else:
            session.study = optuna.load_study(study_name=plan.name, storage=session.optuna_storage)
        if plan.spec.search is not None:  # a resumption must not replay earlier draws
            started = len(session.trials())
            session.study.sampler = sampler_for(
                plan.spec.search.sampler, stream * 100_003 + started
            )
        attrs = session.study.user_attrs
        if attrs.get(DIGEST, plan.digest()) != plan.digest():
            raise StudyError(
                f"study {plan.name!r} in {storage.shown} was made from another definition of "
                f"{plan.path.name} (digest {attrs[DIGEST]} vs {plan.digest()}): rename the study "
                "(name:) or use another --storage"
            )
        if not create:  # read-only: status, export, plot
            session.parent_run_id = attrs.get(PARENT, "")
            return session
        shown = [metric_name(o.metric) for o in plan.spec.objectives]
        if session.study.metric_names != shown:  # optuna-dashboard shows these, not "Objective 0"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                session.study.set_metric_names(shown)
        session.experiment_id = prepare_store(uri, plan.name)
        if DIGEST not in attrs:
            for cell in plan.cells():  # idempotent: a crash here is repaired by the next open
                session.study.enqueue_trial(cell_params(cell), skip_if_exists=True)
            session.study.set_user_attr("jepa_lab.n_trials", plan.spec.n_trials)
            session.study.set_user_attr(DIGEST, plan.digest())
        session.parent_run_id = attrs.get(PARENT) or create_parent(session)
        reap(session)
        end_stale_runs(session)  # runs a downed tracking server kept from being ended
    return session


# ----------------------------------------------------------------------- budget, retries


def budget_used(trials: list[FrozenTrial], *, finished: bool = False) -> int:
    """Trials that count toward ``n_trials``: all but failed ones that were re-enqueued (or only
    the finished ones among them: the progress of a study)."""
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    return sum(
        1
        for t in trials
        if not (t.state == TrialState.FAIL and t.number in retried)
        and (t.state.is_finished() or not finished)
    )


def n_finished(session: Session) -> int:
    """Finished trials that count toward ``n_trials``: the study's progress."""
    return budget_used(session.trials(), finished=True)


def is_complete(session: Session, trials: list[FrozenTrial] | None = None) -> bool:
    trials = session.trials() if trials is None else trials
    busy = any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    return not busy and budget_used(trials) >= session.plan.spec.n_trials


def reap(session: Session) -> list[int]:
    """Fail RUNNING trials of dead workers and re-enqueue their parameters (under the lock)."""
    reaped = []
    for trial in session.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(WORKER)
        dead = owner is not None and worker_alive(owner) is False
        if dead and _retry(session, trial, f"worker died: its worker process ({owner}) is gone"):
            reaped.append(trial.number)
    if session.storage.heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(session.study)  # calls _retry for each stale trial
    return reaped


def _retry(session: Session, trial: FrozenTrial, reason: str, *, failed: bool = False) -> bool:
    """Re-enqueue the parameters of the RUNNING ``trial``, fail it (``failed``: Optuna's
    heartbeat already did) with ``reason`` and the retry's number, and end its MLflow run KILLED.
    False if it had finished meanwhile.

    In this order, and the copy enqueued only once, so a kill at any point leaves either the
    trial RUNNING under a dead worker (reaped again later) or the work done: never a failed
    trial without its copy (lost) nor two copies (run twice). The copy carries Optuna's own
    retry keys (``failed_trial``, ``retry_history``, as its ``RetryFailedTrialCallback`` sets
    them) beside ``jepa_lab.retry_of``. A trial Optuna's heartbeat failed is finished already:
    its reason stays on its MLflow run and its link on the copy.
    """
    retry = _retry_number(session, trial.number)
    if retry is None:
        # a trial killed before it suggested everything still has its grid cell here
        params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
        history = [*trial.system_attrs.get(RETRY_HISTORY, []), trial.number]
        system_attrs = {"fixed_params": params, FAILED_TRIAL: history[0], RETRY_HISTORY: history}
        session.study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                system_attrs=system_attrs,
                user_attrs={RETRY_OF: trial.number},
            )
        )
        retry = _retry_number(session, trial.number)
    if not failed:
        trial_id = session.trial_id(trial.number)
        try:
            record_failure(session, trial.number, f"{reason}; retried as trial {retry}", retry)
            if not session.optuna_storage.set_trial_state_values(trial_id, TrialState.FAIL):
                return False
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
    try:
        end_orphan_runs(session, trial.number, reason)
    except TrackingError as exc:  # the trial is retried all the same; its old run stays open
        print(f"warning: trial {trial.number}: {exc}", flush=True)
    return True


def _retry_number(session: Session, number: int) -> int | None:
    """The trial that retries trial ``number``, if one was enqueued."""
    found = [t.number for t in session.trials() if t.user_attrs.get(RETRY_OF) == number]
    return found[0] if found else None


# ------------------------------------------------------------------------------ the loop


def claim(session: Session) -> optuna.Trial | None:
    """The next trial for this worker, or None when the budget is spent (under the lock)."""
    with session.lock():
        reap(session)
        trials = session.trials()
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and (
            session.plan.spec.grid_only or budget_used(trials) >= session.plan.spec.n_trials
        ):
            return None
        with warnings.catch_warnings():  # heartbeats are ours (see _heartbeat), not optimize()'s
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = session.study.ask()
        trial.set_user_attr(WORKER, worker_identity())
        return trial


def _worth_waiting(session: Session, trials: list[FrozenTrial]) -> bool:
    """Whether a trial still running elsewhere may yet be retried by this worker."""
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            alive = worker_alive(trial.user_attrs.get(WORKER, ""))
            if session.storage.heartbeat or alive is not None:
                return True
    return False


@contextlib.contextmanager
def _heartbeat(session: Session, number: int) -> Iterator[None]:
    """Record the trial's heartbeat every HEARTBEAT_S while it runs (PostgreSQL only)."""
    if not session.storage.heartbeat:
        yield
        return
    assert isinstance(session.optuna_storage, RDBStorage)
    storage, trial_id, stop = session.optuna_storage, session.trial_id(number), threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)  # retries a lost connection
            except StorageUnreachable:  # the main thread meets the outage at its next call
                return
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def work(
    session: Session,
    options: WorkerOptions,
    echo: Callable[[Outcome], None],
    progress: Progress | None = None,
) -> list[Outcome]:
    """Claim and run trials until the study's budget is spent; returns this worker's outcomes.

    Waits while trials that might still be retried run elsewhere. ``fail_fast``: stops after
    the first failure in the study since this worker started. Ctrl-C / SIGTERM / an infra error
    mid-trial: the trial is failed and re-enqueued, then the exception propagates. A database
    that stayed unreachable (:class:`StorageUnreachable`) propagates at once: the trial stays
    RUNNING under this dead worker and is retried by the next claim or by the heartbeat.
    """
    failed_before = {t.number for t in session.trials() if t.state == TrialState.FAIL}
    outcomes: list[Outcome] = []
    while True:
        if options.fail_fast and _new_failures(session, failed_before):
            break
        trial = claim(session)
        if trial is None:
            trials = session.trials()
            if is_complete(session, trials) or not _worth_waiting(session, trials):
                break
            time.sleep(POLL_S)
            continue
        try:
            with _heartbeat(session, trial.number):
                outcome = run_trial(session, trial, options, progress)
        except StorageUnreachable:
            raise
        except BaseException as exc:
            reason = f"interrupted: {type(exc).__name__}"
            if isinstance(exc, StudyError | TrackingError):
                reason = f"interrupted: {' '.join(str(exc).split())[:300]}"
            with session.lock():
                frozen = next(t for t in session.trials() if t.number == trial.number)
                if frozen.state == TrialState.RUNNING:
                    _retry(session, frozen, reason)
            raise
        outcomes.append(outcome)
        try:
            log_aggregates(session)
        except TrackingError as exc:  # progress on the parent run is a convenience
            print(f"warning: study parent run: {exc}", flush=True)
        echo(outcome)
        if options.fail_fast and outcome.state == "FAIL":
            break
    return outcomes


def _new_failures(session: Session, before: set[int]) -> list[FrozenTrial]:
    trials = session.trials()
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    return [t for t in trials if t.state == TrialState.FAIL and t.number not in before | retried]
