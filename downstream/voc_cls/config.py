"""The ``colorbench voc-cls`` config: one dataclass tree, loaded from YAML with ``--set``.

Defaults are the full protocols (DESIGN §4); ``configs/downstream/voc_cls_tiny.yaml``
shortens them for the built-in data on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from downstream.trunks import TrunkConfig
from pretext.data.sources import DataConfig

PROTOCOLS = ("finetune", "svm")


def voc_data() -> DataConfig:
    return DataConfig(name="voc07", kind="voc", root="data/VOCdevkit/VOC2007", train_split="trainval",
                      val_split="test", crop=227, resize=256, num_workers=4)


@dataclass
class HeadConfig:
    """fc6 / fc7 / fc8 on the trunk's last tap (see ``downstream.voc_cls.finetune``)."""
    pool: str = "auto"  # auto (AlexNet's pool5 3/2 when the map has >= 3 cells, else none) | max3s2 | avg | none
    hidden: int = -1  # fc6 / fc7 width; -1: 4096 x the trunk's width (AlexNet's 4096 at width 1); 0: no fc6 / fc7
    dropout: float = 0.5  # after fc6 and fc7, as AlexNet and the Krähenbühl fine-tuning nets
    from_checkpoint: bool = True  # take fc6 / fc7 from a checkpoint whose head has compatible ones


@dataclass
class RescaleConfig:
    """Krähenbühl et al. 2016 rescaling of a pretrained net before fine-tuning
    (``downstream.voc_cls.rescale``): function-preserving per-unit and per-layer scales."""
    enabled: bool = False  # off: the plain protocol; Zhang et al. fine-tuned their weights rescaled
    images: int = 64  # calibration images (activation statistics and gradient change rates)
    iterations: int = 10  # between-layer passes (Krähenbühl et al.: a few suffice)
    alpha: float = 0.25  # damping of each between-layer step


@dataclass
class FinetuneConfig:
    """Krähenbühl / Donahue protocol: SGD lr 1e-3, batch 16, 80k it, x0.5 every 10k,
    wd 1e-6, clip 10; random scale 0.5-2 + crop + mirror; 10 random test crops."""
    iterations: int = 80_000
    batch_size: int = 16
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-6
    lr_step: int = 10_000  # lr x lr_gamma every lr_step iterations
    lr_gamma: float = 0.5
    clip_grad: float = 10.0  # gradient norm clip (0 = off)
    scale_min: float = 0.5  # random rescale of the (resized) image before the crop
    scale_max: float = 2.0
    test_crops: int = 10  # random crops (+ mirror) per test image, logits averaged
    eval_batch_size: int = 32  # images per evaluation batch (x test_crops views)
    log_every: int = 50
    eval_every: int = 0  # 0 = evaluate once, at the end
    head: HeadConfig = field(default_factory=HeadConfig)
    rescale: RescaleConfig = field(default_factory=RescaleConfig)


@dataclass
class SvmPool:
    mode: str = "auto"  # the linear probes' pools (downstream.probe.heads): auto | table | adaptive
    target_dim: int = 9000


@dataclass
class SvmConfig:
    """Goyal et al. 2019: one LinearSVC per class and tap on frozen, pooled, L2-normalised
    features; cost by 3-fold cross-validated AP."""
    taps: list[str] = field(default_factory=list)  # empty = every tap of the trunk
    costs: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    folds: int = 3
    pos_weight: float = 2.0  # class_weight {1: 2, -1: 1}, as Goyal et al.
    max_iter: int = 2000  # liblinear iterations (non-converged fits are counted in the records)
    n_jobs: int = -1  # joblib workers over classes x costs (-1 = every core)
    batch_size: int = 64  # images per feature-extraction batch
    cache_dir: str = "runs/cache/voc_svm_features"  # pooled features on disk, keyed by trunk + data + pools
    pool: SvmPool = field(default_factory=SvmPool)


@dataclass
class VocClsConfig:
    name: str = "voc_cls"
    out_dir: str = "runs"
    protocol: str = "finetune"  # finetune | svm (--protocol)
    train_from: str = "conv1"  # finetune: the first layer that trains: fc6 (fc6-8 only) | conv1 (all) | any tap
    method: str = ""  # label in the records; default: colorization for a checkpoint, else the init
    classes: list[str] = field(default_factory=list)  # empty = read from the data (per-class lists or XML)
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=voc_data)
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    trunk_data: DataConfig = field(default_factory=lambda: DataConfig(root=""))  # baselines' data; root "" = data
    trunk_num_classes: Optional[int] = None  # supervised baseline: classes of trunk_data (None = its folders)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    svm: SvmConfig = field(default_factory=SvmConfig)


def check_config(cfg: VocClsConfig) -> None:
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {cfg.protocol!r}")
    if cfg.data.kind != "voc":
        raise ValueError(f"data.kind must be voc (a VOCdevkit/VOC2007 folder), got {cfg.data.kind!r}")
    f = cfg.finetune
    if f.iterations < 1 or f.batch_size < 1 or f.test_crops < 1 or f.lr_step < 1:
        raise ValueError("finetune.iterations, batch_size, test_crops and lr_step must be >= 1")
    if not 0 < f.scale_min <= f.scale_max:
        raise ValueError(f"finetune.scale_min / scale_max need 0 < min <= max, got {f.scale_min}, {f.scale_max}")
    if f.head.pool not in ("auto", "max3s2", "avg", "none"):
        raise ValueError(f"finetune.head.pool must be auto, max3s2, avg or none, got {f.head.pool!r}")
    s = cfg.svm
    if not s.costs or min(s.costs) <= 0:
        raise ValueError(f"svm.costs must be a non-empty list of positive costs, got {s.costs}")
    if s.folds < 2:
        raise ValueError(f"svm.folds must be >= 2, got {s.folds}")
