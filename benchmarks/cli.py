"""The ``colorbench`` command line.

Each subcommand lives in the module that owns its concern; that module exposes
``add_arguments(parser)`` and ``run(args) -> int`` (or a named pair, e.g.
``add_prior_arguments`` / ``run_prior``). Modules are imported only for the subcommand
being run, so ``colorbench --help`` answers without importing torch.

User errors are handled here, in one place: a bad config key, a missing path, a file
that is not a checkpoint, a bad argument value print one line on stderr naming what and
where, and exit with code 2; ``--debug`` (anywhere on the command line) shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pretext import __version__

# name -> (module, function suffix ("" = add_arguments / run), one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "make-data": ("pretext.data.synthetic.generate", "", "write the built-in procedural benchmark (ImageFolder + VOCdevkit)"),
    "prior": ("pretext.train", "prior", "estimate the empirical ab prior over a data source and cache it"),
    "pretrain": ("pretext.train", "", "train a pretext method (colorization) on an encoder"),
    "methods": ("pretext.methods.listing", "", "list the registered pretext methods: paper, loss, output"),
    "colorize": ("pretext.colorize", "", "colorize photos with a trained checkpoint"),
    "eval-color": ("downstream.color_quality.evaluate", "", "score colorizations: AuC, rebalanced AuC, PSNR, classifier top-1"),
    "probe": ("downstream.probe.linear_probe", "", "linear probes on frozen features of every conv layer"),
    "detect": ("downstream.detection.main", "", "Fast R-CNN detection on PASCAL VOC 2007 with a pretrained trunk"),
    "det-eval": ("downstream.detection.voc_eval", "", "VOC devkit AP (+ COCO AP) of detection result files"),
    "segment": ("downstream.segmentation.train", "", "FCN-32s/16s/8s semantic segmentation on PASCAL VOC 2012 with a pretrained trunk"),
    "seg-eval": ("downstream.segmentation.seg_eval", "", "mIU, pixel / mean accuracy, fwIU of predicted label PNGs against VOC's"),
    "voc-cls": ("downstream.voc_cls.main", "", "PASCAL VOC07 classification: fine-tuning (fc6-8 / all) or linear SVMs per layer"),
    "table": ("benchmarks.tables", "", "build comparison tables and plots from run records"),
    "study": ("downstream.study.cli", "", "perceptual realism study: create, serve, report (2AFC real vs fake)"),
    "demo": ("benchmarks.demo", "", "run the whole suite end to end on the built-in data"),
    "speed": ("benchmarks.speed", "", "speed benchmarks (ratios against a reference, measured in one run)"),
    "import-weights": ("pretext.encoders.weights_import", "", "convert released weights (the ECCV16 PyTorch colorizer) into a colorbench checkpoint"),
    "export-weights": ("pretext.encoders.weights_export", "", "write a checkpoint's trunk in torchvision / detectron2 key layout"),
}

# Exceptions that mean "the user gave something wrong" (configs, paths, files, values).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _top_parser() -> argparse.ArgumentParser:
    pad = max(map(len, COMMANDS))
    lines = [f"  {name:<{pad}}  {text}" for name, (_, _, text) in COMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog="colorbench",
        description="Colorization pretext training and transfer benchmarks.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'colorbench COMMAND --help' for a command's options; "
               "add --debug to see a traceback instead of a one-line error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"colorbench {__version__}")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)) and exc.filename:
        text = f"{exc.strerror or text}: {exc.filename}"
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0].startswith("-"):
        _top_parser().parse_args(argv or ["--help"])
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _top_parser().error(f"unknown command {name!r}; choose from: {', '.join(COMMANDS)}")
    module_name, suffix, text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"colorbench {name}", description=text)
    getattr(module, f"add_{suffix}_arguments" if suffix else "add_arguments")(parser)
    args = parser.parse_args(rest)  # a bad flag: argparse's usage line and exit code 2
    try:
        return int(getattr(module, f"run_{suffix}" if suffix else "run")(args) or 0)
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"colorbench {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"colorbench {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
