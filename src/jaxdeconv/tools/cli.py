"""The ``jaxdeconv`` command: ``jaxdeconv <command> [options]``."""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help); each module has main(argv) -> exit status.
COMMANDS = {
    "verify": ("jaxdeconv.tools.verify", "reproduce the seed and cross-check every formulation"),
    "explain": ("jaxdeconv.tools.explain", "walk through a transposed convolution step by step"),
    "bench": ("jaxdeconv.tools.bench", "time every formulation and the baselines on real layers"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: jaxdeconv <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\njaxdeconv: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
