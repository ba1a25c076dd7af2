"""The fixed classifier behind "semantic interpretability" (Zhang et al. 2016, Table 1):
the top-1 accuracy of a classifier that never changes, run on recolorized images.

Two ways to get one:

* ``load_classifier``: a torchvision architecture (``vgg16`` as in the paper, ``resnet50``,
  any name ``torchvision.models.get_model`` knows) with weights from a file the user
  gives, read with ``torch.load(weights_only=True)`` and loaded strictly. Inputs get
  the ImageNet evaluation transform the weights were validated with: short side to
  ``resize`` (256), centre crop ``input_size`` (224), ImageNet mean / std.
* ``get_or_train_classifier``: on the built-in data (ImageFolder with ``train`` / ``val``
  class folders) the suite trains its own once, on the *colour* training images, and
  caches it under ``cache_dir`` keyed by a hash of the data (root, file names, the
  generator manifest ``dataset.json`` when there is one) and of the recipe, so later
  calls reuse it. Architecture: ``resnet10``, torchvision's ``ResNet`` with
  ``BasicBlock`` and one block per stage (4.9 M parameters), a well-kept library model
  rather than a custom net. Inputs are 32 px (the built-in 64 px images halved: shapes
  stay recognisable and training costs a quarter; about 3 CPU minutes on 2 cores).
  Recipe: SGD (Nesterov, momentum 0.9, weight decay 5e-4), cosine lr from 0.05, batch
  64, 6 epochs, random crop (reflect padding 1/8) + horizontal flip. On the built-in
  data it scores 87% top-1 on the true-colour validation images and 20% on their gray
  versions (chance 12.5%): colour carries the class, as the benchmark intends.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.transforms import v2
from tqdm import tqdm

from downstream.color_quality.config import ClassifierConfig
from pretext.data.loader import make_loader
from pretext.data.sources import DataConfig, build_source
from pretext.engine.checkpoint import save_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BUILTIN_ARCH = "resnet10"
CLASSIFIER_FORMAT = "colorbench-classifier-v1"
RECIPE_VERSION = 1  # bump when the training recipe changes (invalidates cached classifiers)


def build_classifier(arch: str, num_classes: int) -> torch.nn.Module:
    """``resnet10`` (torchvision ResNet, BasicBlock x [1,1,1,1]) or any torchvision model name."""
    if arch == BUILTIN_ARCH:
        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except ValueError as exc:
        raise ValueError(f"unknown classifier architecture {arch!r}: use {BUILTIN_ARCH} or a torchvision model "
                         f"name (e.g. vgg16, resnet50); {exc}") from None


@dataclass
class FixedClassifier:
    """A frozen classifier and its preprocessing; ``predict`` takes RGB in [0,1]."""

    model: torch.nn.Module
    arch: str
    input_size: int
    resize: int | None = None  # short side before the centre crop (None: input_size)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    source: str = ""

    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB [N,3,H,W] in [0,1] -> short side ``resize``, centre crop ``input_size``, normalised."""
        h, w = rgb.shape[-2:]
        short = max(self.resize or self.input_size, self.input_size)
        s = short / min(h, w)
        size = (max(short, round(h * s)), max(short, round(w * s)))
        x = rgb if (h, w) == size else F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=True)
        top, left = (size[0] - self.input_size) // 2, (size[1] - self.input_size) // 2
        x = x[..., top:top + self.input_size, left:left + self.input_size]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def predict(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB [N,3,H,W] in [0,1] -> predicted class long [N]."""
        self.model.eval()
        device = next(self.model.parameters()).device
        return self.model(self.preprocess(rgb.to(device).float())).argmax(1)


def _state_dict_of(obj, path: str) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"{path}: expected a state dict (or a dict with 'model' / 'state_dict')")


def load_classifier(path: str | os.PathLike, arch: str, num_classes: int, input_size: int = 224,
                    device: torch.device | str = "cpu", resize: int | None = 256) -> FixedClassifier:
    """A torchvision ``arch`` with the weights in ``path`` (weights_only=True, strict),
    fed as its ImageNet evaluation: short side ``resize`` (256), centre crop ``input_size`` (224)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"classifier weights not found: {path}") from None
    except Exception as exc:  # unpickling refused, truncated file, foreign format
        raise ValueError(f"cannot load classifier weights {path} safely (weights_only=True): {exc}") from exc
    model = build_classifier(arch, num_classes)
    try:
        model.load_state_dict(_state_dict_of(obj, str(path)), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit a {arch} with {num_classes} classes: "
                         f"{str(exc).splitlines()[0]} ...") from None
    return FixedClassifier(model.to(device).eval(), arch, input_size, resize, source=str(path))


# ----------------------------------------------------------------------------- built-in classifier

def data_key(root: str, split: str, recipe: dict) -> str:
    """Hash of the data root, its training file names and the recipe (the cache key)."""
    source = build_source("imagefolder", root, split)
    top = os.path.abspath(root)
    names = [os.path.relpath(source.path(i), top) for i in range(len(source))]
    manifest = ""
    for candidate in (Path(top) / "dataset.json", Path(top).parent / "dataset.json"):
        if candidate.is_file():
            manifest = candidate.read_text()
            break
    blob = json.dumps({"root": top, "split": split, "files": names, "classes": source.classes,
                       "manifest": manifest, "recipe": recipe}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def train_transform(size: int) -> v2.Compose:
    return v2.Compose([v2.Resize(size), v2.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"),
                       v2.RandomHorizontalFlip(), v2.PILToTensor()])


def train_one_epoch(clf: FixedClassifier, loader, optimizer, scheduler, device, epoch: int) -> tuple[float, float]:
    """One pass; returns (mean loss, train top-1 %)."""
    clf.model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for batch in tqdm(loader, desc=f"classifier epoch {epoch}", unit="batch", leave=False):
        if batch["image"].shape[0] == 0:
            continue
        x = clf.preprocess(batch["image"].to(device).float() / 255)  # [N,3,S,S]
        y = batch["label"].to(device)
        logits = clf.model(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"classifier loss is {float(loss)} in epoch {epoch}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def train_classifier(root: str, split: str, recipe: dict, device: torch.device, log=print) -> tuple[FixedClassifier, list]:
    """Train ``resnet10`` on the colour images of ``root/split``; returns (classifier, classes)."""
    torch.manual_seed(recipe["seed"])
    source = build_source("imagefolder", root, split, transform=train_transform(recipe["input_size"]))
    loader = make_loader(source, recipe["batch_size"], shuffle=True, num_workers=recipe["workers"],
                         seed=recipe["seed"], drop_last=len(source) > recipe["batch_size"])
    model = build_classifier(BUILTIN_ARCH, len(source.classes)).to(device)
    clf = FixedClassifier(model, BUILTIN_ARCH, recipe["input_size"])
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = max(1, recipe["epochs"] * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    for epoch in range(recipe["epochs"]):
        loss, top1 = train_one_epoch(clf, loader, optimizer, scheduler, device, epoch)
        log(f"classifier epoch {epoch + 1}/{recipe['epochs']}: loss {loss:.3f}, train top-1 {top1:.1f}%")
    clf.model.eval()
    return clf, list(source.classes)


def get_or_train_classifier(root: str, split: str = "train", cache_dir: str | os.PathLike = "runs/cache",
                            device: torch.device | str = "cpu", input_size: int = 32, epochs: int = 6,
                            batch_size: int = 64, lr: float = 0.05, seed: int = 0, workers: int = 0,
                            log=print) -> FixedClassifier:
    """The cached built-in classifier for this data, trained on first use."""
    device = torch.device(device)
    recipe = {"arch": BUILTIN_ARCH, "input_size": input_size, "epochs": epochs, "batch_size": batch_size,
              "lr": lr, "seed": seed, "version": RECIPE_VERSION}
    path = Path(cache_dir) / f"classifier-{data_key(root, split, recipe)}.pt"
    if path.is_file():
        try:  # not a pretext checkpoint (load_checkpoint would refuse its format): read it as plain tensors
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"cannot read the cached classifier {path} ({exc}); delete it") from None
        if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT:
            raise ValueError(f"{path} is not a colorbench classifier cache ({CLASSIFIER_FORMAT}); delete it")
        model = build_classifier(BUILTIN_ARCH, int(payload["num_classes"]))
        model.load_state_dict(payload["model"], strict=True)
        log(f"classifier: using cached {path}")
        return FixedClassifier(model.to(device).eval(), BUILTIN_ARCH, int(payload["input_size"]), source=str(path))
    log(f"classifier: training {BUILTIN_ARCH} on the colour images of {os.path.join(root, split)} "
        f"({epochs} epochs, {input_size} px); cached as {path}")
    recipe["workers"] = workers  # how, not what: not part of the key
    clf, classes = train_classifier(root, split, recipe, device, log)
    state = {k: v.cpu() for k, v in clf.model.state_dict().items()}
    save_checkpoint(path, {"format": CLASSIFIER_FORMAT, "model": state, "arch": BUILTIN_ARCH,
                           "num_classes": len(classes), "classes": classes, "input_size": input_size,
                           "recipe": {k: v for k, v in recipe.items() if k != "workers"}})
    clf.source = str(path)
    return clf


def resolve_classifier(source, data: DataConfig, cfg: ClassifierConfig, device, seed: int = 0, log=print):
    """The fixed classifier for an evaluated ``source``: ``cfg.weights`` when given, else
    the built-in one (trained on ``data``'s train split of an imagefolder). None, with
    the reason logged, when disabled, when the images have no labels, or when no
    classifier can be had."""
    if not cfg.enabled:
        return None
    if (source.labels < 0).any():
        log("classifier top-1: skipped (the evaluation images have no class labels)")
        return None
    if cfg.weights:
        classes = cfg.num_classes or (len(source.classes) if source.classes else None)
        if not classes:
            raise ValueError("classifier.num_classes is needed for a source without class folders")
        return load_classifier(cfg.weights, cfg.arch, classes, cfg.input_size or 224, device,
                               resize=cfg.resize if cfg.resize is not None else 256)
    if data.kind != "imagefolder" or not data.train_split:
        log("classifier top-1: skipped (the built-in classifier needs an imagefolder with a train split; "
            "set classifier.weights)")
        return None
    return get_or_train_classifier(data.root, data.train_split, cfg.cache_dir, device, cfg.input_size or 32,
                                   cfg.epochs, seed=seed, workers=data.num_workers, log=log)
