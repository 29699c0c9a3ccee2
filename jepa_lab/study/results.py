"""A study's results: its trials as plain rows, the per-configuration summary and Pareto front
as tables (through :mod:`jepa_lab.study.export`), and the study-level artifacts on its parent
run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from jepa_lab.spec.plan import StudyPlan
from jepa_lab.study.session import Session
from jepa_lab.study.tracking import ERROR, RETRY_OF, RUN_ID, A, mlflow_client


def trial_rows(session: Session) -> list[dict[str, Any]]:
    """One plain dict per trial for :mod:`jepa_lab.study.export` (no Optuna objects leave here)."""
    retried = {t.user_attrs.get(RETRY_OF) for t in session.trials()}
    rows = []
    for trial in session.trials():
        attrs = trial.user_attrs
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "retried": trial.number in retried,
                "config_id": attrs.get(A + "config_id"),
                "spec_digest": attrs.get(A + "spec_digest"),
                "seed": attrs.get(A + "seed"),
                "strategy": attrs.get(A + "strategy"),
                "mlflow_run_id": attrs.get(RUN_ID),
                "error": attrs.get(ERROR, ""),
                "settings": attrs.get(A + "settings", {}),
                "metrics": attrs.get(A + "metrics", {}),
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


def tables(session: Session) -> tuple[Any, Any, Any, float]:
    """(trials, per-configuration summary, Pareto front, hypervolume) as DataFrames and a float."""
    from jepa_lab.study import export

    objectives = session.plan.spec.objectives
    trials = export.trials_frame(trial_rows(session))
    summary = export.aggregate(trials, objectives, setting_keys(session.plan))
    front = export.front(summary, objectives)
    return trials, summary, front, export.front_hypervolume(front, objectives)


def export_meta(session: Session, hypervolume: float) -> dict[str, Any]:
    """What every exported table is read with: the study, objectives, reference point, volume."""
    objectives = session.plan.spec.objectives
    return {
        "study": session.plan.name,
        "objectives": [f"{o.metric} ({o.direction})" for o in objectives],
        "reference_point": [o.reference for o in objectives],
        "hypervolume": hypervolume,
    }


def finalize(session: Session) -> None:
    """Study-level artifacts on the parent run: the Pareto table (CSV), the per-configuration
    summary, the plots (PNG, HTML) and the study file; the hypervolume as a metric."""
    import tempfile

    from jepa_lab.study import export
    from jepa_lab.study import plot as pareto_plot

    _, summary, front, volume = tables(session)
    objectives, params = session.plan.spec.objectives, setting_keys(session.plan)
    meta = export_meta(session, volume)
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
            for name in ("pareto.png", "pareto.html"):
                pareto_plot.plot(summary, front, objectives, folder / name, session.plan.name)
        (folder / session.plan.path.name).write_text(session.plan.text)
        for path in sorted(folder.iterdir()):
            client.log_artifact(session.parent_run_id, str(path), "study")
        client.log_metric(session.parent_run_id, "study/hypervolume", volume, step=done)
        client.log_metric(session.parent_run_id, "study/complete_trials", done, step=done)
        client.set_tag(
            session.parent_run_id, A + "reference_point", str([o.reference for o in objectives])
        )
