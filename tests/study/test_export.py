"""Pareto front, hypervolume, seed aggregation and table formats, against independent math."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import sem, ttest_rel
from scipy.stats import t as t_dist
from statsmodels.stats.multitest import multipletests

from jepa_lab.spec.study import ObjectiveSpec
from jepa_lab.study import export
from jepa_lab.study import plot as pareto_plot
from jepa_lab.study.quantities import cell

from ..conftest import REPO

DOCS = REPO / "docs"

MIN_MIN = [
    ObjectiveSpec(metric="diag/pred_loss", direction="minimize", reference=2.0),
    ObjectiveSpec(metric="diag/sigreg_pooled", direction="minimize", reference=100.0),
]


def brute_front(points: np.ndarray, directions: list[str]) -> set[int]:
    """Rows no other row dominates, by the definition, with Python loops."""
    signs = [1 if d == "minimize" else -1 for d in directions]
    keep = set()
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            better_eq = all(s * a <= s * b for s, a, b in zip(signs, q, p, strict=True))
            strictly = any(s * a < s * b for s, a, b in zip(signs, q, p, strict=True))
            dominated |= i != j and better_eq and strictly
        if not dominated:
            keep.add(i)
    return keep


def union_volume(points: np.ndarray, reference: np.ndarray) -> float:
    """Volume of the union of the boxes [p, reference] (minimisation), by inclusion-exclusion."""
    points = [p for p in points if np.all(p < reference)]
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            corner = np.max(subset, axis=0)
            total += (-1) ** (size + 1) * float(np.prod(reference - corner))
    return total


def grid_area(points: np.ndarray, reference: np.ndarray) -> float:
    """2-D union area on the grid of all coordinates: count the covered cells."""
    xs = np.unique(np.r_[points[:, 0], reference[0]])
    ys = np.unique(np.r_[points[:, 1], reference[1]])
    area = 0.0
    for x0, x1 in itertools.pairwise(xs):
        for y0, y1 in itertools.pairwise(ys):
            if np.any((points[:, 0] <= x0) & (points[:, 1] <= y0)):
                area += (x1 - x0) * (y1 - y0)
    return area


@pytest.mark.parametrize("seed", range(5))
def test_nondominated_matches_the_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 6, size=(40, 3)).astype(float)  # many ties and duplicates
    directions = ["minimize", "maximize", "minimize"]
    mask = export.nondominated(points, directions)
    assert set(np.flatnonzero(mask)) == brute_front(points, directions)


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_2d_matches_a_grid_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 1, size=(12, 2))
    reference = np.array([1.1, 0.9])  # some points lie beyond it in y and add nothing
    volume = export.hypervolume(points, reference, ["minimize", "minimize"])
    inside = points[np.all(points < reference, axis=1)]
    assert volume == pytest.approx(grid_area(inside, reference), rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_3d_and_4d_match_inclusion_exclusion(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for dims in (3, 4):
        points = rng.uniform(0, 1, size=(7, dims))
        reference = np.full(dims, 1.0)
        volume = export.hypervolume(points, reference, ["minimize"] * dims)
        assert volume == pytest.approx(union_volume(points, reference), rel=1e-9)


def test_hypervolume_with_a_maximised_objective_and_the_limits() -> None:
    # maximise accuracy: the reference 0.0 is the worst; negating maps it to minimisation
    points = np.array([[0.5, 0.8], [0.3, 0.6]])
    volume = export.hypervolume(points, [1.0, 0.0], ["minimize", "maximize"])
    assert volume == pytest.approx(
        grid_area(np.array([[0.5, -0.8], [0.3, -0.6]]), np.array([1.0, 0.0]))
    )
    assert export.hypervolume(points, [0.2, 0.0], ["minimize", "maximize"]) == 0.0  # all beyond
    single = export.hypervolume(np.array([[1.0, 1.0]]), [3.0, 2.0], ["minimize", "minimize"])
    assert single == pytest.approx(2.0)
    duplicated = export.hypervolume(np.array([[1.0, 1.0]] * 3), [3.0, 2.0], ["minimize"] * 2)
    assert duplicated == pytest.approx(2.0)


def test_hypervolume_agrees_with_optunas_own() -> None:
    private = pytest.importorskip("optuna._hypervolume")
    rng = np.random.default_rng(7)
    points = rng.uniform(0, 1, size=(15, 3))
    reference = np.full(3, 1.2)
    front = points[export.nondominated(points, ["minimize"] * 3)]
    ours = export.hypervolume(points, reference, ["minimize"] * 3)
    assert ours == pytest.approx(private.compute_hypervolume(front, reference), rel=1e-9)


def rows() -> list[dict]:
    """Two strategies x 3 seeds, a duplicate of one seed, a failed and a running trial."""
    accuracy = {"ema": [0.70, 0.72, 0.71], "sigreg": [0.76, 0.78, 0.77]}
    out = []
    number = 0
    for kind, values in accuracy.items():
        for seed, value in enumerate(values):
            out.append(
                {
                    "trial": number,
                    "state": "COMPLETE",
                    "config_id": f"cfg-{kind}",
                    "spec_digest": f"{kind}-{seed}",
                    "seed": seed,
                    "strategy": kind,
                    "mlflow_run_id": f"run{number}",
                    "error": "",
                    "settings": {"strategy.kind": kind, "mask.ratio": 0.5, "seed": seed},
                    "metrics": {
                        "eval/probe_acc": value,
                        "eval/random_probe_acc": 0.60 + 0.01 * seed,
                        "diag/pred_loss": 0.5 if kind == "ema" else 0.6,
                        "diag/sigreg_pooled": 50.0 if kind == "ema" else 5.0 + seed,
                    },
                }
            )
            number += 1
    duplicate = dict(
        out[0],
        trial=number,
        mlflow_run_id="dup",
        metrics={**out[0]["metrics"], "eval/probe_acc": 0.0},
    )
    failed = {
        "trial": number + 1,
        "state": "FAIL",
        "config_id": None,
        "seed": None,
        "strategy": None,
        "error": "loss became non-finite at step 3",
        "settings": {},
        "metrics": {},
    }
    return [*out, duplicate, failed]


def test_aggregate_means_stds_counts_and_paired_comparisons() -> None:
    # Replaces the old Welch assertions (p_vs_* were unpaired Welch p-values; now they are
    # Holm-adjusted paired tests, with the raw p and the test named beside them).
    trials = export.trials_frame(rows())
    table = export.aggregate(trials, MIN_MIN, ["strategy.kind", "mask.ratio"])
    assert list(table["strategy"]) == ["ema", "sigreg"]
    ema = table.iloc[0]
    assert ema["n"] == 3 and ema["trials"] == "0,1,2"  # the duplicate seed is not counted
    assert ema["eval/probe_acc"] == pytest.approx(0.71)
    assert ema["eval/probe_acc std"] == pytest.approx(np.std([0.70, 0.72, 0.71], ddof=1))
    low, high = t_dist.interval(0.95, 2, loc=0.71, scale=sem([0.70, 0.72, 0.71]))
    assert (ema["eval/probe_acc lo"], ema["eval/probe_acc hi"]) == pytest.approx((low, high))
    # sigreg - ema is 0.06 on every seed: no spread, so no test and no p = 0
    assert table.iloc[1]["d_vs_ema"] == pytest.approx(0.06)
    assert math.isnan(table.iloc[1]["p_vs_ema"]) and "zero spread: no test" in ema["test_vs_sigreg"]
    assert math.isnan(ema["p_vs_ema"])
    raw = [
        ttest_rel([0.70, 0.72, 0.71], [0.60, 0.61, 0.62]).pvalue,
        ttest_rel([0.76, 0.78, 0.77], [0.60, 0.61, 0.62]).pvalue,
    ]
    assert ema["p_vs_random raw"] == pytest.approx(raw[0])
    holm = multipletests(raw, method="holm")[1]
    assert [ema["p_vs_random"], table.iloc[1]["p_vs_random"]] == pytest.approx(list(holm))
    assert ema["test_vs_random"] == "paired t, n = 3"
    front = export.front(table, MIN_MIN)  # ema: lower pred loss; sigreg: lower SIGReg
    assert list(front["strategy"]) == ["ema", "sigreg"]


def test_front_deduplicates_identical_configurations() -> None:
    # NSGA-II proposed the same parameters twice (trials 0 and 2): one row, n = 1
    base = {
        "state": "COMPLETE",
        "seed": 0,
        "strategy": "sigreg",
        "error": "",
        "settings": {"strategy.lambda": 0.1},
    }
    data = [
        {
            **base,
            "trial": 0,
            "config_id": "a",
            "mlflow_run_id": "r0",
            "metrics": {"diag/pred_loss": 0.4, "diag/sigreg_pooled": 9.0},
        },
        {
            **base,
            "trial": 1,
            "config_id": "b",
            "mlflow_run_id": "r1",
            "settings": {"strategy.lambda": 0.2},
            "metrics": {"diag/pred_loss": 0.5, "diag/sigreg_pooled": 3.0},
        },
        {
            **base,
            "trial": 2,
            "config_id": "a",
            "mlflow_run_id": "r2",
            "metrics": {"diag/pred_loss": 0.4, "diag/sigreg_pooled": 9.0},
        },
        {
            **base,
            "trial": 3,
            "config_id": "c",
            "mlflow_run_id": "r3",
            "settings": {"strategy.lambda": 0.3},
            "metrics": {"diag/pred_loss": 0.6, "diag/sigreg_pooled": 9.5},
        },
    ]
    table = export.aggregate(export.trials_frame(data), MIN_MIN, ["strategy.lambda"])
    front = export.front(table, MIN_MIN)
    assert list(front["trial"]) == [0, 1] and list(front["n"]) == [1, 1]
    volume = export.front_hypervolume(front, MIN_MIN)
    assert volume == pytest.approx(
        grid_area(np.array([[0.4, 9.0], [0.5, 3.0]]), np.array([2.0, 100.0]))
    )


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_every_format_round_trips(fmt: str, tmp_path: Path) -> None:
    table = export.aggregate(export.trials_frame(rows()), MIN_MIN, ["strategy.kind", "mask.ratio"])
    out = export.export_table(table, MIN_MIN, ["strategy.kind", "mask.ratio"])
    assert {
        "diag/pred_loss (min)",
        "diag/pred_loss (min) std",
        "n",
        "mlflow_run_id",
        "config_id",
        "trial",
        "mask.ratio",
        "p_vs_random",
        "d_vs_random",
        "d_vs_random lo",
        "test_vs_random",
        "state",
    } <= set(out.columns)
    meta = {
        "study": "s",
        "objectives": ["a (minimize)"],
        "reference_point": [2.0, 100.0],
        "hypervolume": 1.5,
    }
    path = tmp_path / f"t.{fmt}"
    export.render(out, fmt, meta, path)  # type: ignore[arg-type]
    if fmt == "csv":
        back = pd.read_csv(path)
        assert back["diag/pred_loss (min)"].tolist() == pytest.approx(
            out["diag/pred_loss (min)"].tolist()
        )
    elif fmt == "parquet":
        back = pd.read_parquet(path)
        assert back.shape == out.shape and back.attrs["hypervolume"] == 1.5
    elif fmt == "json":
        data = json.loads(path.read_text())
        assert data["reference_point"] == [2.0, 100.0] and len(data["rows"]) == 2
        assert data["rows"][0]["p_vs_ema"] is None  # NaN becomes null
    else:
        text = path.read_text()
        assert "Hypervolume 1.5" in text and "diag/pred" in text


def test_a_study_without_a_complete_trial_exports_an_empty_table() -> None:
    """Every trial failed (what finalize meets): no summary row, and no KeyError on the missing
    intervals of the validation accuracies."""
    failed = [dict(row, state="FAIL") for row in rows()]
    table = export.aggregate(export.trials_frame(failed), MIN_MIN, ["strategy.kind"])
    assert table.empty and "eval/probe_val_acc" in table
    out = export.export_table(table, MIN_MIN, ["strategy.kind"], export.trials_frame(failed))
    assert set(out["state"]) == {"FAIL"} and "eval/probe_val_acc lo" in out


def test_plots_are_written(tmp_path: Path) -> None:
    table = export.aggregate(export.trials_frame(rows()), MIN_MIN, ["strategy.kind"])
    table["front_prob"] = [1.0, 0.5]  # sigreg's membership uncertain: marked in the plot
    assert "diag/sigreg_pooled lo" in table  # error bars from the CIs
    front = export.front(table, MIN_MIN)
    for name in ("p.png", "p.svg", "p.pdf", "p.html"):
        path = pareto_plot.plot(table, front, MIN_MIN, tmp_path / name, "title")
        assert path.stat().st_size > 1000
    assert (tmp_path / "plotly.min.js").is_file()  # plotly once, beside the HTML
    assert (tmp_path / "p.html").stat().st_size < 100_000  # not inlined per plot
    with pytest.raises(ValueError, match=r"\.pdf or an \.html"):
        pareto_plot.plot(table, front, MIN_MIN, tmp_path / "p.txt", "title")


ACC = [
    ObjectiveSpec(metric="eval/probe_acc", direction="maximize", reference=0.0),
    ObjectiveSpec(metric="diag/pred_loss", direction="minimize", reference=2.0),
]


def test_the_plot_reads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Axes labels with units, one series per strategy in its colour, error bars, faint seeds,
    baseline reference lines, a widened narrow axis said so; the same in plotly."""
    from matplotlib.figure import Figure

    trials = export.trials_frame(rows())
    table = export.aggregate(trials, ACC, ["strategy.kind"])
    front = export.front(table, ACC)
    saved: list[Figure] = []
    original = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda f, *a, **k: (saved.append(f), original(f, *a, **k))
    )
    pareto_plot.plot(table, front, ACC, tmp_path / "p.png", "toy", trials, ["unfinished: 6 of 8"])
    [axes] = saved[0].axes
    assert axes.get_xlabel() == "probe acc. (%), max"
    assert axes.get_ylabel() == "prediction error (MSE), min"
    bars = {c.get_label(): c for c in axes.containers}
    assert set(bars) == {"ema", "sigreg"}
    ema = bars["ema"]
    assert ema.has_xerr and ema.has_yerr
    assert ema.lines[0].get_xdata()[0] == pytest.approx(71.0)  # percent
    assert ema.lines[0].get_color() == pareto_plot.COLOURS["ema"]
    seeds = [c for c in axes.collections if c.get_label() == "_seeds"]
    assert len(seeds) == 2 and all(c.get_alpha() == 0.25 for c in seeds)
    assert len(seeds[0].get_offsets()) == 3  # one faint point per seed
    lines = {ln.get_label(): ln for ln in axes.lines}
    assert lines["random init (baseline)"].get_xdata()[0] == pytest.approx(61.0)
    low, high = axes.get_ylim()  # pred_loss 0.5 and 0.6: wide enough, no widening needed
    assert high - low >= 0.1 * 0.6
    assert "unfinished: 6 of 8" in saved[0].get_suptitle()
    pareto_plot.plot(table, front, ACC, tmp_path / "p.html", "toy", trials)
    html = (tmp_path / "p.html").read_text()
    assert 'src="plotly.min.js"' in html and (tmp_path / "plotly.min.js").is_file()
    raw = html[html.index("Plotly.newPlot(") :]
    assert '"name":"ema"' in raw and pareto_plot.COLOURS["sigreg"] in raw
    assert '"error_x":{"array"' in raw.replace(" ", "") or '"error_x":{"type"' in raw.replace(
        " ", ""
    )
    assert "probe acc. (%), max" in raw


def test_a_narrow_axis_is_widened_and_said_so() -> None:
    low, high, widened = pareto_plot.axis_range(np.array([71.0, 71.4]), "eval/probe_acc")
    assert widened and high - low == pytest.approx(pareto_plot.MIN_SPAN_PCT)
    assert pareto_plot.axis_range(np.array([60.0, 80.0]), "eval/probe_acc")[2] is False


def test_probe_curves_plot(tmp_path: Path) -> None:
    curves = {"ema-s0": ("ema", [(0.0, 0.3), (512.0, 0.5)]), "sigreg-s0": ("sigreg", [(0.0, 0.3)])}
    for name in ("c.png", "c.html"):
        assert pareto_plot.plot_curves(curves, tmp_path / name, "curves").is_file()


def test_the_paper_table_golden() -> None:
    """Toy study, known values: ema probe 0.70/0.72/0.71 -> mean 71.0 %, half-width of the t CI
    t(0.975, 2) x 0.01 / sqrt(3) = 2.48 pp; gains in pp; human headers; no run ids, no NaN."""
    params = ["strategy.kind", "mask.ratio"]
    table = export.aggregate(export.trials_frame(rows()), MIN_MIN, params)
    front_ids = {"cfg-ema"}
    paper = export.paper_table(table, MIN_MIN, params, front_ids)
    ema = paper.set_index("strategy").loc["ema"]
    assert ema["probe acc. (%)"] == "71.0 ± 2.5 (3)"
    assert ema["random-init probe acc. (%)"] == "61.0 ± 2.5 (3)"
    assert ema["Δ probe acc. vs random init (pp)"] == "+10.0 ± 2.5 (3)"
    assert ema["Δ probe acc. vs ema (pp)"] == "–"  # no NaN: a dash
    assert list(paper["Pareto front"]) == ["yes", "no"]  # every configuration, membership a column
    meta = {"study": "toy_study", "seeds": [0, 1, 2], "hypervolume": 1.5,
            "reference_point": [2.0, 100.0], "objectives": ["a (minimize)"],
            "warnings": ["unfinished: 6 of 8 trials finished"]}  # fmt: skip
    tex = export.render(paper, "latex", meta)
    assert tex is not None
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert "nan" not in tex.lower() and "run0" not in tex and "cfg-" not in tex
    assert r"71.0${}\pm{}$2.5 (3)" in tex and r"probe acc. (\%)" in tex
    assert r"\caption{Study toy\_study" in tex and "3 seeds (0, 1, 2)" in tex
    assert "paired t-test" in tex and "Holm" in tex
    assert "WARNING: unfinished: 6 of 8 trials finished" in tex
    md = export.render(paper, "md", meta)
    assert md is not None and "probe acc. (%)" in md and "WARNING: unfinished" in md


PAGE_GOLDEN = r"""\begin{table}[t]
\centering
\small
\setlength{\tabcolsep}{4pt}
\begin{tabular}{lrrrrrr}
\toprule
configuration & n & probe acc. & gain over & p & pred. error $\downarrow$ & SIGReg stat. $\downarrow$ \\
 &  & (\%) & random init & (Holm) & (MSE) & pooled \\
 &  &  & (pp) &  &  &  \\
\midrule
ema, ratio=0.5* & 3 & 71.0${}\pm{}$2.5 & +10.0${}\pm{}$2.5 & 0.0033 & 0.5${}\pm{}$0 & 50${}\pm{}$0 \\
sigreg, ratio=0.5 & 3 & 77.0${}\pm{}$2.5 & +16.0${}\pm{}$2.5 & 0.0026 & 0.6${}\pm{}$0 & 6${}\pm{}$2.48 \\
\bottomrule
\end{tabular}
\caption{Study toy\_study: mean $\pm$ half-width of the 95 \% CI over 3 seeds (0, 1, 2), n per configuration in column n; accuracies in \%, differences in percentage points (pp), paired by seed. Test: paired t-test over seeds (exact McNemar on test images where n = 1), Holm-adjusted over the table; no p-value where n is too small. *: on the Pareto front of the configurations' means; $\downarrow$/$\uparrow$: the study's objectives (minimised/maximised). p: Holm-adjusted p-value of the gain over random init, -- where n allows no test. Every column: jepa-lab export -{}-wide. Hypervolume 1.5 against reference point [2.0, 100.0] (diag/pred\_loss (minimize), diag/sigreg\_pooled (minimize)).}
\label{tab:toy-study}
\end{table}
"""  # noqa: E501


TOY_META = {
    "study": "toy_study",
    "seeds": [0, 1, 2],
    "hypervolume": 1.5,
    "reference_point": [2.0, 100.0],
    "objectives": ["diag/pred_loss (minimize)", "diag/sigreg_pooled (minimize)"],
}


def test_the_page_width_latex_table_golden() -> None:
    """The default LaTeX export: 7 columns, not 24. Known values as in the golden above; the
    Holm p-values by hand: paired t over seeds gives raw p 0.0033 (ema) and 0.0013 (sigreg),
    Holm doubles the smaller; pred. error has no spread (± 0); SIGReg 5, 6, 7 -> 6 ± 2.48."""
    from jepa_lab.study.paper import compact_table

    params = ["strategy.kind", "mask.ratio"]
    table = export.aggregate(export.trials_frame(rows()), MIN_MIN, params)
    page = compact_table(table, MIN_MIN, params, {"cfg-ema"})
    meta = TOY_META
    assert export.render(page, "latex", meta) == PAGE_GOLDEN
    # one seed per configuration: no p column (a column of dashes), RankMe when no objective
    # is a diagnostic
    single = table.assign(p_vs_random=math.nan, **{"diag/rankme": [12.345, 2.0]})
    only = compact_table(single, [ACC[0]], params, set())
    assert list(only.columns) == [
        "configuration",
        "n",
        "probe acc. ↑\n(%)",
        "gain over\nrandom init\n(pp)",
        "RankMe",
    ]
    assert list(only["RankMe"]) == ["12.3", "2"] and "p:" not in only.attrs["legend"]


def test_an_exported_json_renders_the_same_page_width_table(tmp_path: Path) -> None:
    """An archived JSON export gives back the table ``export -f latex`` renders on the study."""
    from jepa_lab.study.paper import compact_table, latex_of_export

    params = ["strategy.kind", "mask.ratio"]
    table = export.aggregate(export.trials_frame(rows()), MIN_MIN, params)
    front_ids = {"cfg-ema"}
    meta = TOY_META
    out = export.export_table(table, MIN_MIN, params, front_ids=front_ids)
    export.render(out, "json", meta, tmp_path / "t.json")
    again = latex_of_export(json.loads((tmp_path / "t.json").read_text()))
    direct = export.render(compact_table(table, MIN_MIN, params, front_ids), "latex", meta)
    assert again == direct == PAGE_GOLDEN


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_the_main_jobs_page_width_table_fits_a_55_inch_text_block(tmp_path: Path) -> None:
    """Compiled with pdflatex in a 5.5 in text block (a single-column conference page): no
    overfull box; the wide table (every column) does not fit it."""
    from jepa_lab.study.paper import latex_of_export

    data = json.loads((DOCS / "results" / "main_job" / "ema_vs_sigreg.json").read_text())
    page = latex_of_export(data)
    assert page.count(r"\\") == 6  # 3 header lines, 3 configurations
    wide = (DOCS / "results" / "main_job" / "ema_vs_sigreg.tex").read_text()
    for name, table in (("page", page), ("wide", wide)):
        (tmp_path / f"{name}.tex").write_text(
            "\\documentclass{article}\\usepackage{booktabs}"
            "\\usepackage[paperwidth=8.5in,paperheight=11in,textwidth=5.5in]{geometry}"
            f"\\begin{{document}}{table}\\end{{document}}"
        )
        done = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:]
    assert "Overfull" not in (tmp_path / "page.log").read_text()
    assert "Overfull" in (tmp_path / "wide.log").read_text()


def test_machine_formats_carry_front_membership_and_units(tmp_path: Path) -> None:
    params = ["strategy.kind"]
    table = export.aggregate(export.trials_frame(rows()), MIN_MIN, params)
    out = export.export_table(table, MIN_MIN, params, front_ids={"cfg-ema"})
    assert list(out["on_front"]) == [True, False] and len(out) == 2  # nothing silently dropped
    from jepa_lab.study.quantities import units

    meta = {"study": "s", "units": units(), "finished": False, "warnings": ["unfinished"]}
    export.render(out, "json", meta, tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["finished"] is False and data["units"]["eval/probe_acc"] == "fraction"


def drift_runs(seeds: int = 3) -> list[dict]:
    """Two configurations (sigreg healthy, none collapsed: NaN NMSE) x 3 corrections, 30 steps,
    per seed; and the reference levels."""
    runs = []
    k = np.arange(1, 31)
    for strategy, scale in (("sigreg", 1.0), ("none", math.nan)):
        for seed in range(seeds):
            series = {
                f"drift/nmse/{c}": [(int(i), float(scale * (f + 0.01 * seed) * i / 30)) for i in k]
                for c, f in (("none", 2.0), ("renorm", 1.5), ("knn", 0.5))
            }
            series["drift/ref/nmse_mean"] = [(int(i), 1.0 + 0.01 * seed) for i in k]
            series["drift/ref/nmse_random"] = [(int(i), 2.0) for i in k]
            settings = {"strategy.kind": strategy, "loss.rollout_steps": 8, "seed": seed}
            runs.append({"config_id": f"cfg-{strategy}", "seed": seed, "strategy": strategy,
                         "settings": settings, "series": series})  # fmt: skip
    return runs


def test_drift_table_is_the_t_interval_over_seeds_per_step() -> None:
    table = export.drift_table(drift_runs(), ["strategy.kind", "loss.rollout_steps"])
    arms = table[~table["reference"]]
    assert len(arms) == 2 * 3 * 30 and set(arms["panel"]) == {"loss.rollout_steps = 8"}
    row = arms[(arms["strategy"] == "sigreg") & (arms["correction"] == "knn") & (arms["k"] == 30)]
    values = np.array([0.5, 0.51, 0.52])  # seeds 0, 1, 2 at k = 30
    half = t_dist.ppf(0.975, 2) * sem(values)
    assert row["mean"].item() == pytest.approx(values.mean())
    assert row["hi"].item() - row["mean"].item() == pytest.approx(half)
    assert row["n"].item() == 3
    collapsed = arms[arms["strategy"] == "none"]
    assert collapsed["mean"].isna().all() and (collapsed["n"] == 0).all()
    refs = table[table["reference"]]
    assert set(refs["correction"]) == {"mean latent", "random real latent"}
    assert refs[refs["correction"] == "mean latent"]["n"].eq(6).all()  # over every run


def test_the_drift_plot_reads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One 30-point curve per arm, coloured by strategy, styled by correction, with its CI band;
    the collapsed arms named, not drawn; grey reference levels; the same traces in plotly."""
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    table = export.drift_table(drift_runs(), ["strategy.kind", "loss.rollout_steps"])
    saved: list[Figure] = []
    original = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda f, *a, **k: (saved.append(f), original(f, *a, **k))
    )
    pareto_plot.plot_drift(table, tmp_path / "d.png", "toy drift", ["unfinished: 4 of 6"])
    [axes] = [a for a in saved[0].axes if a.get_visible()]
    assert axes.get_xlabel() == "horizon step k" and "NMSE" in axes.get_ylabel()
    assert axes.get_title() == "loss.rollout_steps = 8"
    lines = {ln.get_label(): ln for ln in axes.lines}
    for correction, style in (("no", "-"), ("renorm", "--"), ("knn", ":")):
        line = lines[f"sigreg, {correction} correction"]
        assert list(line.get_xdata()) == list(range(1, 31))
        assert line.get_color() == pareto_plot.COLOURS["sigreg"]
        assert line.get_linestyle() == style
        collapsed = lines[f"none, {correction} correction: collapsed (NaN NMSE)"]
        assert np.isnan(collapsed.get_ydata()).all()
    assert lines["sigreg, knn correction"].get_ydata()[-1] == pytest.approx(0.51)
    bands = [c for c in axes.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3 and all(b.get_label() == "_ci" for b in bands)  # sigreg's, not none's
    knn_band = bands[2].get_paths()[0].vertices
    assert knn_band[:, 1].max() > 0.52 and knn_band[:, 1].min() < 0.5 / 30  # wraps the seeds
    assert lines["mean latent (reference)"].get_color() == "0.35"
    assert "unfinished: 4 of 6" in saved[0].get_suptitle()
    # the means span 0.017 (knn, k = 1) to 2.0 (no correction, k = 30): a log axis
    assert axes.get_yscale() == "log" and axes.get_ylabel().endswith("log scale")
    for name in ("d.svg", "d.pdf"):
        assert pareto_plot.plot_drift(table, tmp_path / name, "toy").stat().st_size > 1000
    pareto_plot.plot_drift(table, tmp_path / "d.html", "toy drift")
    html = (tmp_path / "d.html").read_text()
    assert 'src="plotly.min.js"' in html
    raw = html[html.index("Plotly.newPlot(") :].replace(" ", "")
    assert raw.count('"fill":"toself"') == 3
    assert '"name":"sigreg,knncorrection"' in raw and '"dash":"dot"' in raw
    assert pareto_plot.COLOURS["sigreg"] in raw and "meanlatent(reference)" in raw
    assert '"type":"log"' in raw
    with pytest.raises(ValueError, match=r"\.pdf or an \.html"):
        pareto_plot.plot_drift(table, tmp_path / "d.txt", "toy")


def test_the_drift_axis_turns_logarithmic_only_when_an_arm_explodes() -> None:
    table = export.drift_table(drift_runs(), ["strategy.kind", "loss.rollout_steps"])
    late = table[table["k"] >= 20]  # 1.0 to 2.0: linear
    assert pareto_plot.drift_floor(late) is None
    exploding = table.assign(mean=table["mean"].where(table["k"] != 30, 500.0))
    assert pareto_plot.drift_floor(exploding) == pytest.approx(table["mean"].min() / 2)


def world_rows() -> list[dict]:
    """A world study's trials: sigreg, whose kNN-corrected planner wins 10 more of 100 test
    episodes than plain CEM on each of 3 seeds (and loses none), and none, where it changes
    nothing; per-episode successes as the runs keep them."""
    out = []
    for number, (kind, seed) in enumerate(itertools.product(("sigreg", "none"), range(3))):
        cem = "1" * 40 + "0" * 60
        knn = "1" * 50 + "0" * 50 if kind == "sigreg" else cem
        prefix = "pred/plan/test/cross/receding"
        out.append({
            "trial": number, "state": "COMPLETE", "config_id": f"cfg-{kind}", "seed": seed,
            "strategy": kind, "spec_digest": f"{kind}-{seed}", "mlflow_run_id": f"r{number}",
            "error": "", "settings": {"strategy.kind": kind, "seed": seed},
            "metrics": {
                "drift/nmse_k30/knn": 0.3 + 0.01 * seed,
                "plan/test/cross/receding/cem/success": 0.4,
                "plan/test/cross/receding/cem_knn/success": knn.count("1") / 100,
            },
            "predictions": {f"{prefix}/cem": cem, f"{prefix}/cem_knn": knn,
                            f"{prefix}/oracle": "1" * 100},
        })  # fmt: skip
    return out


def test_planning_arms_are_compared_with_cem_on_episodes_pooled_over_seeds() -> None:
    from statsmodels.stats.multitest import multipletests

    objectives = [ObjectiveSpec(metric="diag/rankme", direction="maximize", reference=0.0)]
    table = export.aggregate(export.trials_frame(world_rows()), objectives, ["strategy.kind"])
    sigreg, none = table.iloc[0], table.iloc[1]
    knn, oracle = "vs_cem/cross/receding/cem_knn", "vs_cem/cross/receding/oracle"
    assert sigreg[knn] == pytest.approx(0.10) and none[knn] == 0.0
    assert sigreg[f"{knn} test"] == "McNemar exact, 30 discordant; 3 seeds, 300 episodes"
    assert sigreg[f"{knn} p raw"] == pytest.approx(2 * 0.5**30)  # 30 discordant, all one way
    assert math.isnan(none[f"{knn} p"]) and none[f"{knn} test"].startswith("no discordant episode")
    family = [sigreg[f"{knn} p raw"], sigreg[f"{oracle} p raw"], none[f"{oracle} p raw"]]
    holm = multipletests(family, method="holm")[1]
    assert [sigreg[f"{knn} p"], sigreg[f"{oracle} p"], none[f"{oracle} p"]] == pytest.approx(holm)
    assert sigreg["drift/nmse_k30/knn lo"] < 0.31 < sigreg["drift/nmse_k30/knn hi"]
    paper = export.paper_table(table, objectives, ["strategy.kind"], set())
    assert "Δ success, cem_knn - cem, cross-room, receding (pp)" in paper.columns
    assert paper["p (Holm, McNemar) cross/receding/cem_knn"].iloc[0] == f"{holm[0]:.2g}"


def test_a_shares_interval_over_seeds_stays_within_0_and_100_percent() -> None:
    """Success 0 %, 0 %, 3 % over 3 seeds: the t-interval (-3.3 %, +5.3 %) is cut at 0 and,
    no longer centred on the mean, shown by its ends; a plain number keeps mean ± half-width."""
    rows = world_rows()
    for row, success in zip(rows, (0.0, 0.0, 0.03, 0.4, 0.4, 0.4), strict=True):
        row["metrics"]["plan/test/same/receding/cem/success"] = success
    objectives = [ObjectiveSpec(metric="diag/rankme", direction="maximize", reference=0.0)]
    table = export.aggregate(export.trials_frame(rows), objectives, ["strategy.kind"])
    sigreg = table.iloc[0]
    metric = "plan/test/same/receding/cem/success"
    t_high = 0.01 + t_dist.ppf(0.975, 2) * sem([0.0, 0.0, 0.03])
    assert sigreg[f"{metric} lo"] == 0.0 and sigreg[f"{metric} hi"] == pytest.approx(t_high)
    assert cell(metric, sigreg[metric], sigreg[f"{metric} lo"], sigreg[f"{metric} hi"], 3) == (
        f"1.0 [0.0, {100 * t_high:.1f}] (3)"
    )
    nmse = "drift/nmse_k30/knn"  # not a share: its interval is the t-interval, shown as ±
    shown = cell(nmse, sigreg[nmse], sigreg[f"{nmse} lo"], sigreg[f"{nmse} hi"])
    assert shown.startswith("0.31 ± ")
