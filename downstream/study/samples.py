"""Sampled colorizations in a study: a stochastic method's folder written by
``colorbench colorize --samples N`` holds ``<name>_s<j>.png`` (j = 0..N-1) per photo instead
of ``<name>.png``.

The choice (documented in ``colorbench study create --help``): by default *each sample is
a separate fake*. A sampled method contributes one condition per sample j; the design
treats conditions as it treats methods (latin: they rotate over photos and raters, so no
rater sees a photo twice; all: every rater judges every condition), each test pair records
its ``method`` and ``sample``, and the report pools a method's samples into its one
"labelled real %" (the realism of the method's colorizations as drawn, not of a hand-picked
one). ``--sample J`` instead keeps only sample J of every sampled method (e.g. 0, which is
what ``colorize`` without ``--samples`` writes), one condition per method as for the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from downstream.study import StudyError


@dataclass
class Condition:
    """One kind of fake: a method, or one sample of a sampled method, with its file per photo."""

    method: str
    sample: int | None
    files: dict[str, Path]

    @property
    def label(self) -> str:
        return self.method if self.sample is None else f"{self.method} (sample {self.sample})"


def sample_count(files: dict[str, Path], key: str) -> int:
    """How many consecutive samples ``<key>_s0``, ``<key>_s1`` ... a folder holds."""
    n = 0
    while f"{key}_s{n}" in files:
        n += 1
    return n


def method_conditions(name: str, files: dict[str, Path], real: list[str], sample: int | None) -> list[Condition]:
    """The conditions of one method folder (``files``: name without suffix -> path) for the
    real photos ``real``: a plain folder (a file per photo, or none of them sampled) is one
    condition, its completeness checked later (``design.check_methods``); a sampled folder
    is one condition per sample (``sample``: only that one). Every photo needs the same
    number of samples."""
    if all(k in files for k in real) or not any(f"{k}_s0" in files for k in real):
        return [Condition(name, None, files)]
    counts = {k: sample_count(files, k) for k in real}
    missing = sorted(k for k, n in counts.items() if n == 0)
    if missing:
        raise StudyError(f"method {name!r} holds sampled colorizations (<name>_s<j>) but none of {len(missing)} "
                         f"photo(s): {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if len(set(counts.values())) > 1:
        few = min(counts, key=counts.get)
        raise StudyError(f"method {name!r}: photos have different numbers of samples ({min(counts.values())} for "
                         f"{few}, up to {max(counts.values())}); colorize them all with the same --samples")
    n = next(iter(counts.values()))
    if sample is not None and sample >= n:
        raise StudyError(f"--sample {sample}: method {name!r} has samples 0..{n - 1} per photo")
    chosen = range(n) if sample is None else [sample]
    return [Condition(name, j, {k: files[f"{k}_s{j}"] for k in real}) for j in chosen]
