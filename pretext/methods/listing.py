"""``colorbench methods``: the registered pretext methods, one line each (paper · loss · output).

    colorbench methods            # every method
    colorbench methods larsson    # one method, plus its method_kwargs and their defaults
"""
from __future__ import annotations

import argparse
import inspect

from pretext.methods.base import _REGISTRY, list_methods


def summary_line(name: str) -> str:
    """``"zhang      Zhang et al. 2016 · ..."``; an unknown name raises ValueError with the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid names: {', '.join(list_methods())}")
    width = max(map(len, list_methods()))
    return f"{name:<{width}}  {_REGISTRY[name].summary or '(no summary)'}"


def method_kwargs(name: str) -> str:
    """The constructor's keyword arguments with their defaults: ``loss=full, k=5, ...``."""
    params = list(inspect.signature(_REGISTRY[name].__init__).parameters.values())[2:]  # self, trunk
    return ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in params)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show this method only, with its method_kwargs (default: list all)")


def run(args: argparse.Namespace) -> int:
    if args.name:
        print(summary_line(args.name))
        print(f"  method_kwargs: {method_kwargs(args.name)}")
        return 0
    for name in list_methods():
        print(summary_line(name))
    return 0
