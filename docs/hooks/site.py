"""MkDocs hooks for the jaxdeconv site (see mkdocs.yml).

- Pages under ``api/`` that are not files on disk are generated: ``api/NAME.md`` documents
  the module ``jaxdeconv.NAME`` (``api/jaxdeconv.md``: the package itself) from its docstrings.
- ``benchmarks.md`` is generated from ``benchmarks/results/bench.md``, and
  ``benchmarks/results/bench.png`` is copied into the site: the committed results are the
  only copy.
- Pages listed in ``extra.optional_pages`` whose source (the Markdown file, or the module for
  an API page) does not exist yet are dropped from the nav, logged at INFO level; every other
  missing page stays a strict-mode warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.jaxdeconv")

BENCH_DIR = Path("benchmarks") / "results"
BENCH_IMAGE = "benchmarks/bench.png"  # its path inside the site


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _module(page: str) -> str | None:
    """``api/study.md`` -> ``jaxdeconv.study``; ``api/jaxdeconv.md`` -> ``jaxdeconv``."""
    if not (page.startswith("api/") and page.endswith(".md")):
        return None
    stem = page[len("api/") : -len(".md")]
    return "jaxdeconv" if stem == "jaxdeconv" else f"jaxdeconv.{stem}"


def _module_exists(root: Path, module: str) -> bool:
    parts = module.split(".")
    base = root / "src" / Path(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _source_exists(root: Path, docs_dir: Path, page: str) -> bool:
    module = _module(page)
    if module is not None and not (docs_dir / page).is_file():
        return _module_exists(root, module)
    if page == "benchmarks.md":
        return (root / BENCH_DIR / "bench.md").is_file()
    return (docs_dir / page).is_file()


def _nav_pages(nav):
    for item in nav or []:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            yield from _nav_pages(value)
        elif isinstance(value, str):
            yield value


def _prune(nav, drop: set[str]):
    out = []
    for item in nav:
        title, value = next(iter(item.items())) if isinstance(item, dict) else (None, item)
        if isinstance(value, list):
            value = _prune(value, drop)
            if not value:
                continue
        elif value in drop:
            continue
        out.append({title: value} if title is not None else value)
    return out


def on_config(config, **kwargs):
    root, docs_dir = _root(config), Path(config.docs_dir)
    optional = set(config.extra.get("optional_pages", []))
    absent = {p for p in optional if not _source_exists(root, docs_dir, p)}
    if absent:
        log.info("jaxdeconv: not yet written, left out of the nav: %s", ", ".join(sorted(absent)))
        config.nav = _prune(config.nav, absent)
    return config


def _api_page(module: str) -> str:
    return (
        f"# `{module}`\n\n"
        f"Generated from the docstrings of `{module}`.\n\n"
        f"::: {module}\n"
        "    options:\n"
        "      show_root_heading: false\n"
        "      show_submodules: false\n"
    )


def _bench_page(root: Path) -> str:
    table = (root / BENCH_DIR / "bench.md").read_text()
    return (
        "# Benchmarks\n\n"
        "The committed results of `jaxdeconv bench` "
        f"(`{BENCH_DIR.as_posix()}/bench.md` and `bench.png`, included here at build time). "
        "Times are machine-specific: run `jaxdeconv bench --out DIR` to measure yours.\n\n"
        f"![Median time per formulation and baseline, forward and forward + backward]"
        f"({BENCH_IMAGE})\n\n" + table
    )


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    root, docs_dir = _root(config), Path(config.docs_dir)
    for page in _nav_pages(config.nav):
        module = _module(page)
        generate = module is not None and not (docs_dir / page).is_file()
        if generate and _module_exists(root, module):
            files.append(File.generated(config, page, content=_api_page(module)))
    if not (docs_dir / "benchmarks.md").is_file():
        files.append(File.generated(config, "benchmarks.md", content=_bench_page(root)))
        image = root / BENCH_DIR / "bench.png"
        files.append(File.generated(config, BENCH_IMAGE, abs_src_path=str(image)))
    return files
