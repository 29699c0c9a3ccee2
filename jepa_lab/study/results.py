"""A study's results: its trials as plain rows, the per-configuration summary and Pareto front
as tables (through :mod:`jepa_lab.study.export`), and the study-level artifacts on its parent
run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from optuna.trial import TrialState

from jepa_lab.spec.plan import StudyPlan
from jepa_lab.study.session import Session
from jepa_lab.study.tracking import (
    ERROR,
    FAIL_REASON,
    RETRIED_BY,
    RETRY_OF,
    RUN_ID,
    A,
    mlflow_client,
)


def trial_rows(session: Session) -> list[dict[str, Any]]:
    """One plain dict per trial for :mod:`jepa_lab.study.export` (no Optuna objects leave here)."""
    retried_by = {
        t.user_attrs[RETRY_OF]: t.number for t in session.trials() if RETRY_OF in t.user_attrs
    }
    rows = []
    for trial in session.trials():
        attrs = trial.user_attrs
        failed = trial.state == TrialState.FAIL
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "retried": trial.number in retried_by,
                "config_id": attrs.get(A + "config_id"),
                "spec_digest": attrs.get(A + "spec_digest"),
                "seed": attrs.get(A + "seed"),
                "strategy": attrs.get(A + "strategy"),
                "mlflow_run_id": attrs.get(RUN_ID),
                "error": attrs.get(ERROR, ""),
                # a trial Optuna's heartbeat failed has no reason of ours: say what happened
                "fail_reason": (
                    trial.system_attrs.get(FAIL_REASON)
                    or attrs.get(ERROR)
                    or ("no heartbeat (failed by Optuna)" if trial.number in retried_by else "")
                )
                if failed
                else "",
                "retry_of": attrs.get(RETRY_OF),
                "retried_by": attrs.get(RETRIED_BY, retried_by.get(trial.number)),
                "settings": attrs.get(A + "settings", {}),
                "metrics": attrs.get(A + "metrics", {}),
                "predictions": attrs.get(A + "predictions", {}),
                "values": trial.values,
            }
        )
    return rows


def counts(session: Session) -> dict[str, int]:
    """Trials by state, with failed-and-retried ones apart from genuine failures."""
    found: dict[str, int] = {}
    for row in trial_rows(session):
        key = "FAIL (retried)" if row["state"] == "FAIL" and row["retried"] else row["state"]
        found[key] = found.get(key, 0) + 1
    return found


def failures(session: Session) -> list[dict[str, Any]]:
    """The failed trials: number, reason, the trial that retried it (or None), its settings."""
    return [
        {k: row[k] for k in ("trial", "fail_reason", "retried_by", "settings")}
        for row in trial_rows(session)
        if row["state"] == "FAIL"
    ]


def precisions(session: Session) -> dict[str, list[int]]:
    """The precisions (fp32, bf16) the study's completed trials trained at, each with its trial
    numbers: more than one key means their numbers are not directly comparable."""
    found: dict[str, list[int]] = {}
    for trial in session.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        precision = trial.user_attrs.get(A + "precision")
        if precision is not None:
            found.setdefault(str(precision), []).append(trial.number)
    return found


def precision_warning(session: Session) -> str | None:
    """One line when the study's trials trained at different precisions, else None."""
    found = precisions(session)
    if len(found) < 2:
        return None
    parts = "; ".join(
        f"{p}: {len(n)} trial{'s' * (len(n) > 1)} ({', '.join(map(str, n[:8]))}"
        f"{', ...' if len(n) > 8 else ''})"
        for p, n in sorted(found.items())
    )
    return (
        f"warning: trials trained at different precisions ({parts}); their metrics and "
        "throughput are not directly comparable: give every worker the same --precision"
    )


def setting_keys(plan: StudyPlan) -> list[str]:
    """The dotted keys a study varies (without ``seed``), in declaration order."""
    keys = list(plan.spec.grid or {}) + list(plan.spec.search.params if plan.spec.search else {})
    return [k for k in dict.fromkeys(keys) if k != "seed"]


class Tables(NamedTuple):
    """A study's results: trials, per-configuration summary (with ``front_prob``), the Pareto
    front of the means, its hypervolume, the hypervolume's bootstrap interval over seeds and its
    history over trials."""

    trials: Any
    summary: Any
    front: Any
    hypervolume: float
    hypervolume_ci: tuple[float, float]
    history: list[tuple[int, float]]


def tables(session: Session) -> Tables:
    """The study's :class:`Tables` (DataFrames through :mod:`jepa_lab.study.export`)."""
    from jepa_lab.study import export, pareto

    objectives = session.plan.spec.objectives
    trials = export.trials_frame(trial_rows(session))
    uncertainty = pareto.bootstrap(trials, objectives)
    summary = export.aggregate(trials, objectives, setting_keys(session.plan))
    summary = pareto.with_probabilities(summary, uncertainty)
    front = export.front(summary, objectives)
    return Tables(
        trials,
        summary,
        front,
        export.front_hypervolume(front, objectives),
        (uncertainty.hypervolume_low, uncertainty.hypervolume_high),
        pareto.hypervolume_history(trials, objectives),
    )


def export_meta(session: Session, found: Tables) -> dict[str, Any]:
    """What every exported table is read with: the study, objectives, reference point, the
    hypervolume with its bootstrap interval over seeds, and its history over trials."""
    from jepa_lab.study import pareto
    from jepa_lab.study.quantities import units

    objectives = session.plan.spec.objectives
    return {
        "study": session.plan.name,
        "seeds": seeds(found),
        "finished": not unfinished(session),
        "warnings": warnings(session, found),
        "units": units(),
        "objectives": [f"{o.metric} ({o.direction})" for o in objectives],
        "reference_point": [o.reference for o in objectives],
        "hypervolume": found.hypervolume,
        "hypervolume_ci": list(found.hypervolume_ci),
        "hypervolume_resamples": pareto.RESAMPLES,
        "hypervolume_history": [[t, v] for t, v in found.history],
    }


def seeds(found: Tables) -> list[int]:
    """The seeds of the complete trials."""
    trials = found.trials
    if trials.empty or "seed" not in trials:
        return []
    done = trials[trials["state"] == "COMPLETE"]["seed"].dropna()
    return sorted({int(s) for s in done})


def unfinished(session: Session) -> str:
    """``unfinished: 3 of 8 trials finished`` while trials remain or run, else ``""``."""
    from jepa_lab.study.runner import is_complete, n_finished

    if is_complete(session):
        return ""
    return f"unfinished: {n_finished(session)} of {session.plan.spec.n_trials} trials finished"


def warnings(session: Session, found: Tables) -> list[str]:
    """What a reader of a table or plot must know: an unfinished study, unequal n."""
    found_warnings = [w for w in [unfinished(session)] if w]
    summary = found.summary
    if not summary.empty and summary["n"].nunique() > 1:
        low, high = int(summary["n"].min()), int(summary["n"].max())
        found_warnings.append(f"configurations have unequal n ({low} to {high} seeds)")
    return found_warnings


def probe_curves(session: Session) -> dict[str, tuple[str, list[tuple[float, float]]]]:
    """Run name -> (strategy, [(training images, probe accuracy)]) of the study's complete
    trials, from their MLflow ``curve/probe_acc`` histories (steps x the batch size)."""
    curves: dict[str, tuple[str, list[tuple[float, float]]]] = {}
    with mlflow_client(session.uri) as client:
        for row in trial_rows(session):
            run_id = row.get("mlflow_run_id")
            if row.get("state") != "COMPLETE" or not run_id:
                continue
            run = client.get_run(run_id)
            history = client.get_metric_history(run_id, "curve/probe_acc")
            batch = float(run.data.params.get("optim.batch_size", 1))
            points = sorted((m.step * batch, m.value) for m in history)
            if points:
                curves[run.info.run_name or run_id] = (str(row.get("strategy")), points)
    return curves


def drift_runs(session: Session) -> list[dict[str, Any]]:
    """One row per complete trial, a configuration's seed counted once (its first trial, as the
    tables count it): ``config_id``, ``seed``, ``strategy``, ``settings`` and ``series``, the
    per-horizon drift of its MLflow run (each ``drift/nmse/<correction>`` and ``drift/ref/nmse_*``
    metric history, the horizon as step) as [(k, value)]. World-model runs log these; other runs
    give no row."""
    from jepa_lab.study.export import DRIFT, DRIFT_REFERENCES

    runs: list[dict[str, Any]] = []
    seen: set[tuple[Any, Any]] = set()
    with mlflow_client(session.uri) as client:
        for row in sorted(trial_rows(session), key=lambda r: r["trial"]):
            run_id, cell = row.get("mlflow_run_id"), (row["config_id"], row["seed"])
            if row.get("state") != "COMPLETE" or not run_id or cell in seen:
                continue
            seen.add(cell)
            names = [
                name
                for name in client.get_run(run_id).data.metrics
                if name.startswith(DRIFT) or name in DRIFT_REFERENCES
            ]
            series = {
                name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
                for name in sorted(names)
            }
            if series:
                keep = ("config_id", "seed", "strategy", "settings")
                runs.append({k: row[k] for k in keep} | {"series": series})
    return runs


def finalize(session: Session) -> None:
    """Study-level artifacts on the parent run: the Pareto table (CSV), the per-configuration
    summary, the plots (PNG, HTML) and the study file; the hypervolume as a metric."""
    import tempfile

    from jepa_lab.study import export
    from jepa_lab.study import plot as pareto_plot

    found = tables(session)
    summary, front, volume = found.summary, found.front, found.hypervolume
    objectives, params = session.plan.spec.objectives, setting_keys(session.plan)
    meta = export_meta(session, found)
    done = sum(1 for t in session.trials() if t.state == TrialState.COMPLETE)
    with tempfile.TemporaryDirectory() as tmp, mlflow_client(session.uri) as client:
        folder = Path(tmp)
        export.render(
            export.export_table(front, objectives, params), "csv", meta, folder / "pareto.csv"
        )
        export.render(
            export.export_table(summary, objectives, params), "csv", meta, folder / "summary.csv"
        )
        if not summary.empty:
            for name in ("pareto.png", "pareto.svg", "pareto.html"):
                pareto_plot.plot(summary, front, objectives, folder / name, session.plan.name,
                                 found.trials, meta["warnings"])  # fmt: skip
        (folder / session.plan.path.name).write_text(session.plan.text)
        for path in sorted(folder.iterdir()):
            client.log_artifact(session.parent_run_id, str(path), "study")
        for k, (_, value) in enumerate(found.history, start=1):  # in trial order
            client.log_metric(session.parent_run_id, "study/hypervolume_history", value, step=k)
        client.log_metric(session.parent_run_id, "study/hypervolume", volume, step=done)
        client.log_metric(session.parent_run_id, "study/complete_trials", done, step=done)
        client.set_tag(
            session.parent_run_id, A + "reference_point", str([o.reference for o in objectives])
        )
