"""The documentation site builds with ``mkdocs build --strict``: a broken link, a missing page or
a docstring mkdocstrings cannot read fails here, as it fails ``make docs``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs-material is not installed (pip install -e '.[docs]')",
)


def test_site_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for page in ("index.html", "spec/index.html", "api/jepa_lab/index.html"):
        assert (site / page).is_file(), page
    spec = (site / "spec" / "index.html").read_text()
    assert "SigregSpec" in spec and "EmaSpec" in spec
    api = (site / "api" / "jepa_lab" / "index.html").read_text()
    assert "load_spec" in api and "evaluate" in api
