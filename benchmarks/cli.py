"""The ``colorbench`` command line.

Each subcommand lives in the module that owns its concern; that module exposes
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only for the
subcommand being run, so ``colorbench --help`` answers without importing torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pretext import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "make-data": ("pretext.synthetic", "write the built-in procedural benchmark (ImageFolder + VOCdevkit)"),
    "prior": ("pretext.prior", "estimate the empirical ab prior over a data source and cache it"),
    "pretrain": ("pretext.trainer", "train a colorization encoder (the pretext task)"),
    "colorize": ("pretext.colorize", "colorize photos with a trained checkpoint"),
    "eval-color": ("downstream.color_eval", "score colorizations: AuC, rebalanced AuC, PSNR, classifier top-1"),
    "probe": ("downstream.linear_probe", "linear probes on frozen features of every conv layer"),
    "table": ("benchmarks.tables", "build comparison tables and plots from run records"),
    "demo": ("benchmarks.demo", "run the whole suite end to end on the built-in data"),
    "speed": ("benchmarks.speed", "speed benchmarks (ratios against a reference, measured in one run)"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog="colorbench",
        description="Colorization pretext training and transfer benchmarks.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'colorbench COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"colorbench {__version__}")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        _top_parser().parse_args(argv or ["--help"])
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _top_parser().error(f"unknown command {name!r}; choose from: {', '.join(COMMANDS)}")
    module_name, text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(f"colorbench {name}: not available in this version yet ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"colorbench {name}", description=text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
