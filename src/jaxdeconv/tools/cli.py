"""The ``jaxdeconv`` command: ``jaxdeconv <command> [options]``.

Also the pieces the tools share: help text and defaults (:class:`HelpFormatter`,
:func:`plain`), and the error for a missing optional dependency
(:class:`MissingDependency`, :func:`require`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys

# command -> (module, one-line help); each module has main(argv) -> exit status.
COMMANDS = {
    "verify": ("jaxdeconv.tools.verify", "reproduce the seed and cross-check every formulation"),
    "explain": ("jaxdeconv.tools.explain", "walk through a transposed convolution step by step"),
    "bench": ("jaxdeconv.tools.bench", "time every formulation and the baselines on real layers"),
}

# optional dependency (import name) -> the extra that installs it
EXTRAS = {
    "matplotlib": "plot",
    "torch": "torch",
    "flax": "flax",
    "equinox": "equinox",
    "optax": "examples",
    "sklearn": "examples",
}


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message gives the install command."""


def install_command(module: str) -> str:
    """The command that installs the optional dependency ``module``."""
    if module == "torch":  # the CPU build; a looser pin downloads a multi-GB CUDA build
        return "pip install torch==2.13.0  (or: pip install 'jaxdeconv[torch]')"
    extra = EXTRAS.get(module)
    return f"pip install 'jaxdeconv[{extra}]'" if extra else f"pip install {module}"


def require(module: str, purpose: str) -> None:
    """Raise :class:`MissingDependency` unless ``module`` can be imported.

    Checks without importing, so a tool can refuse before it does any work.
    """
    if importlib.util.find_spec(module) is None:
        raise MissingDependency(
            f"{purpose} needs {module}, which is not installed: {install_command(module)}"
        )


_ROLE = re.compile(r":(?:py:)?[a-z]+:`~?([^`]+)`")


def plain(text: str) -> str:
    """Docstring text for a terminal: reStructuredText roles and double backticks removed."""
    text = _ROLE.sub(lambda m: m.group(1), text or "")
    return text.replace("``", "")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows each option's default.

    A default is shown unless the help already states it or there is none to
    show (``None``, or ``False`` for a flag).
    """

    def _get_help_string(self, action):
        text = plain(action.help or "")
        default = action.default
        if (
            "default" not in text
            and default is not None
            and default is not False
            and default is not argparse.SUPPRESS
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def version_text() -> str:
    """``jaxdeconv X (jax Y, Python Z)``, without importing jax."""
    from importlib import metadata

    from .. import __version__

    try:
        jax_version = metadata.version("jax")
    except metadata.PackageNotFoundError:  # pragma: no cover - jax is a dependency
        jax_version = "not installed"
    python = ".".join(map(str, sys.version_info[:3]))
    return f"jaxdeconv {__version__} (jax {jax_version}, Python {python})"


def _usage() -> str:
    lines = [
        "usage: jaxdeconv [-h] [-V] <command> [options]",
        "",
        "PyTorch-exact transposed convolution for JAX: the command-line tools.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "options:",
        "  -h, --help     show this help and exit",
        "  -V, --version  show the versions of jaxdeconv, jax and Python and exit",
        "",
        "Run 'jaxdeconv <command> --help' for a command's options.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        print(version_text())
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in COMMANDS:
        print(_usage(), file=sys.stderr)
        print(f"\njaxdeconv: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        return module.main(argv[1:])
    except MissingDependency as e:
        print(f"jaxdeconv {argv[0]}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
