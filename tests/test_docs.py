"""The documentation site builds from the repository with warnings as errors.

``mkdocs build --strict`` (what CI runs, through this test) into a temporary folder: every
page of the nav is built, the API reference carries the docstrings with no raw
reStructuredText roles left, and the benchmark page shows the committed table and figure.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses / whole programs: see pyproject markers

ROOT = Path(__file__).resolve().parents[1]


def _nav_pages(nav):
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            yield from _nav_pages(value)
        else:
            yield value


def _html(site: Path, page: str) -> Path:
    """``api/study.md`` -> ``site/api/study/index.html`` (MkDocs' directory URLs)."""
    stem = page[: -len(".md")]
    return site / ("index.html" if stem == "index" else f"{stem}/index.html")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    missing = [
        m
        for m in ("mkdocs", "material", "mkdocstrings_handlers.python")
        if importlib.util.find_spec(m.split(".")[0]) is None
    ]
    assert not missing, f"the docs build needs {missing}: pip install -e '.[docs]'"
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner, not a warning
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out, proc.stderr


def _config():
    import yaml

    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_nav_page_is_built(site):
    out, _ = site
    pages = list(_nav_pages(_config()["nav"]))
    assert "porting.md" in pages and "api/formulations.md" in pages
    for page in pages:
        assert _html(out, page).is_file(), page


def test_api_reference_is_generated_from_the_docstrings(site):
    out, _ = site
    api = (out / "api" / "jaxdeconv" / "index.html").read_text()
    for name in ("conv_transpose", "conv_transpose_output_size", "init_conv_transpose"):
        assert f'id="jaxdeconv.{name}"' in api, name
    study = (out / "api" / "study" / "index.html").read_text()
    assert "Odena et al." in study  # a docstring's prose
    assert 'href="../jaxdeconv/#jaxdeconv.conv_transpose"' in study  # a role, now a link
    for html in out.rglob("*.html"):
        text = html.read_text()
        raw = re.findall(r":(?:func|class|mod|data|meth|attr):`", text)
        assert not raw, f"{html.relative_to(out)}: raw reStructuredText role"


def test_benchmark_page_shows_the_committed_results(site):
    out, _ = site
    page = (out / "benchmarks" / "index.html").read_text()
    results = ROOT / "benchmarks" / "results"
    first_row = next(
        line for line in (results / "bench.md").read_text().splitlines() if line.startswith("| ")
    )
    assert "<table>" in page and first_row.split("|")[1].strip() in page
    layers = [layer["name"] for layer in json.loads((results / "bench.json").read_text())["layers"]]
    assert layers and all(name in page for name in layers), layers
    assert 'src="bench.png"' in page
    assert (out / "benchmarks" / "bench.png").read_bytes() == (results / "bench.png").read_bytes()
    assert not (ROOT / "docs" / "benchmarks.md").exists()  # generated, not a copy
