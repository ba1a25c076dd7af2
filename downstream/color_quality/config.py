"""The ``colorbench eval-color`` config (Table 1): one dataclass, loaded from YAML with
``--set a.b=v`` overrides (``pretext.engine.config``); an unknown key is an error.

    colorbench eval-color --config configs/downstream/eval_color_tiny.yaml --checkpoint C

What is scored comes from ``data``: the evaluated images are its *val* split
(``val_split`` / ``val_list`` / ``val_limit``); its *train* split feeds the random
baseline's colours, the prior when no checkpoint carries one, and the built-in
classifier. ``data.crop`` / ``data.resize`` are the centre crops a prior is counted on
when no checkpoint carries one; the evaluated images keep their native size unless
``image_crop`` is set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pretext.color.prior import PriorConfig
from pretext.data.sources import DataConfig
from pretext.engine.config import ConfigError

BASELINES = ("ground_truth", "gray", "random", "prior_mean")


def _eval_data() -> DataConfig:
    # one pass in the main process: decoding small images is not the bottleneck of scoring
    return DataConfig(num_workers=0)


def _eval_prior() -> PriorConfig:
    return PriorConfig(max_images=2000)  # stable at 313 bins; only counted when no checkpoint carries a prior


@dataclass
class ClassifierConfig:
    """The fixed classifier behind "semantic interpretability" (``classifier.py``)."""

    enabled: bool = True  # false: skip classifier top-1 (and the built-in classifier's training)
    weights: Optional[str] = None  # torchvision state dict (weights_only); null: train the built-in one once, cached
    arch: str = "vgg16"  # torchvision architecture of `weights` (the paper used VGG-16)
    num_classes: Optional[int] = None  # classes of `weights` (default: the data's class folders)
    # input side: null = 224 for given weights (ImageNet), 32 for the built-in classifier
    # (the 64 px built-in images halved: 4x cheaper to train)
    input_size: Optional[int] = None
    # given weights: short side before the centre crop (null = 256: torchvision's ImageNet
    # evaluation, resize 256 then crop 224, as the weights were validated)
    resize: Optional[int] = None
    epochs: int = 6  # built-in classifier: 87% val top-1 on true colours, 20% on gray (built-in data)
    cache_dir: str = "runs/cache"  # where the built-in classifier is cached


@dataclass
class EvalColorConfig:
    name: str = "eval-color"
    out_dir: str = "runs/eval-color"  # the run directory: records, curves, per-image scores
    overwrite: bool = False  # replace the results of an earlier run in out_dir
    checkpoints: list[str] = field(default_factory=list)  # pretext checkpoints to score (full / class / l2 ...)
    # decoders for methods that predict a distribution (Zhang's 313 bins: mean / mode / annealed,
    # Larsson's also median): any decoder of a registered method; each checkpoint is scored with
    # the listed ones it has (the others are skipped, said once in the log; none of them: its
    # default). annealed (T = 0.38) is the paper's method; a method with one output (l2) is scored once
    decoders: list[str] = field(default_factory=lambda: ["annealed"])
    # stochastic methods (royer ...): colorizations scored per image; the row reports the mean
    # over samples and their std (auc_std ...); sample_seed fixes them (reruns: the same numbers)
    samples: int = 3
    sample_seed: int = 0
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))  # [] for none
    size: Optional[int] = None  # short side the network sees (null: each checkpoint's training short side, else 256; 0 = native)
    image_crop: Optional[int] = None  # centre-crop the evaluated images (null: native size; the paper scored 256 x 256)
    image_resize: Optional[int] = None  # with image_crop: short side first (default: image_crop)
    data: DataConfig = field(default_factory=_eval_data)
    prior: PriorConfig = field(default_factory=_eval_prior)  # path: a prior file, else the first checkpoint's, else counted
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    batch_size: int = 16  # images per batch (same-size images are batched, mixed sizes go one by one)
    timing_runs: int = 10  # timed forward passes per model (median reported)
    per_image: bool = True  # write per_image.csv (every method's AuC / PSNR / prediction per image)
    seed: int = 0  # random baseline picks and built-in classifier training
    device: str = "auto"  # auto: CUDA when present, else CPU


def check_config(cfg: EvalColorConfig) -> None:
    """Cross-field rules, checked before anything is loaded or counted."""
    from pretext.colorize import registered_decoders

    for key, values, valid in (("decoders", cfg.decoders, registered_decoders()), ("baselines", cfg.baselines, BASELINES)):
        bad = [v for v in values if v not in valid]
        if bad:
            raise ConfigError(f"{key}: unknown {bad}; valid: {', '.join(valid)}")
    if not cfg.checkpoints and not cfg.baselines:
        raise ConfigError("nothing to evaluate: give checkpoints (--checkpoint) and/or baselines")
    for key, path in [*((f"checkpoints[{i}]", p) for i, p in enumerate(cfg.checkpoints)),
                      ("classifier.weights", cfg.classifier.weights), ("prior.path", cfg.prior.path)]:
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{key}: file not found: {path}")
    for key in ("batch_size", "timing_runs", "samples"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
