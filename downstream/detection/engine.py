"""Fast R-CNN training and test loops (the torchvision references' engine shape).

``train_one_epoch`` runs minibatches until ``iterations`` (the loader is endless:
Fast R-CNN counts iterations, not epochs); ``evaluate`` runs every test image at one
scale and returns the detections per class, ready for the devkit result files.

Loss (Fast R-CNN): cross-entropy over K + 1 classes on all sampled RoIs, plus smooth L1
(beta 1) between the class-specific deltas of each foreground RoI and its normalised
target, summed over the 4 coordinates and divided by the number of RoIs.

Test: softmax scores, per-class boxes decoded from the deltas, clipped to the image,
scores below ``score_thresh`` dropped, per-class NMS at IoU ``nms`` (0.3,
``torchvision.ops.batched_nms``), then the ``max_per_image`` (100) best detections.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, clip_boxes_to_image
from tqdm import tqdm

from downstream.detection.data import BOX_CODER
from pretext.data.images import BadSample
from pretext.data.loader import SkipCounter


@dataclass
class TestConfig:
    score_thresh: float = 0.05  # py-faster-rcnn's test threshold; lower scores cannot change AP much
    nms: float = 0.3  # per-class NMS IoU (Fast R-CNN)
    max_per_image: int = 100  # detections kept per image, over all classes


def fast_rcnn_loss(logits: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits`` [R, K+1], ``deltas`` [R, 4(K+1)], ``labels`` int64 [R] (0 = background),
    ``targets`` [R, 4] -> (classification loss, box loss)."""
    cls = F.cross_entropy(logits, labels)
    fg = torch.nonzero(labels > 0).flatten()
    picked = deltas.view(len(labels), -1, 4)[fg, labels[fg]]             # [F, 4]
    box = F.smooth_l1_loss(picked, targets[fg], beta=1.0, reduction="sum") / max(len(labels), 1)
    return cls, box


def batch_input(trunk, images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """uint8 RGB images [3, h_i, w_i] -> the trunk's input [N, C, H, W], padded at the
    bottom / right with 0 (the normalised mean: L = 50 or the ImageNet mean)."""
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    xs = [trunk.prepare(im[None], device) for im in images]               # [1, C, h_i, w_i]
    return torch.cat([F.pad(x, (0, w - x.shape[3], 0, h - x.shape[2])) for x in xs])


def train_one_epoch(model, optimizer, scheduler, loader, device: torch.device, step: int, iterations: int,
                    bar: tqdm, run, skips: SkipCounter, log_every: int = 20, clip: float = 0.0) -> tuple[int, dict]:
    """Minibatches from ``loader`` until ``iterations``; returns (step, speed stats)."""
    model.train()
    seen, start = 0, time.perf_counter()
    for items in loader:
        if step >= iterations:
            break
        good = [it for it in items if not isinstance(it, BadSample)]
        skips.update([it for it in items if isinstance(it, BadSample)])
        if not good:
            continue
        x = batch_input(model.trunk, [it["image"] for it in good], device)
        logits, deltas = model(x, [it["rois"].to(device) for it in good])
        labels = torch.cat([it["labels"] for it in good]).to(device)
        targets = torch.cat([it["targets"] for it in good]).to(device)
        cls, box = fast_rcnn_loss(logits, deltas, labels, targets)
        loss = cls + box
        if not torch.isfinite(loss):
            raise FloatingPointError(f"detect: non-finite loss at step {step} (cls {cls.item()}, box {box.item()})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        step, seen = step + 1, seen + len(good)
        bar.update(1)
        if step % log_every == 0 or step == iterations:
            fg = int((labels > 0).sum())
            bar.set_postfix(cls=f"{cls.item():.3f}", box=f"{box.item():.3f}")
            run.log("train", step=step, loss_cls=cls.item(), loss_box=box.item(), fg_rois=fg,
                    rois=len(labels), lr=scheduler.get_last_lr()[0])
    elapsed = time.perf_counter() - start
    return step, {"train_images": seen, "train_seconds": elapsed, "train_images_per_s": seen / max(elapsed, 1e-9)}


def postprocess(logits: torch.Tensor, deltas: torch.Tensor, proposals: torch.Tensor, scale: float,
                size: tuple[int, int], cfg: TestConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's outputs for its proposals [P, 4] (scaled pixels) -> (boxes [D, 4] in
    original pixels, scores [D], labels [D] in 1..K), best first, D <= max_per_image."""
    probs = F.softmax(logits.float(), dim=1)                                 # [P, K+1]
    num = probs.shape[1]
    boxes = BOX_CODER.decode_single(deltas.float(), proposals.float()) / scale  # [P, 4(K+1)]
    boxes = clip_boxes_to_image(boxes.view(-1, num, 4), size)[:, 1:]        # [P, K, 4]
    scores = probs[:, 1:]                                                    # [P, K]
    labels = torch.arange(1, num, device=probs.device).expand_as(scores)
    boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    keep = torch.nonzero(scores > cfg.score_thresh).flatten()
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, cfg.nms)[:cfg.max_per_image]  # sorted by score
    return boxes[keep], scores[keep], labels[keep]


@torch.no_grad()
def evaluate(model, loader, device: torch.device, classes: list[str], cfg: TestConfig,
             skips: SkipCounter) -> tuple[dict[str, list], dict, list]:
    """Detections of every test image -> ({class: [(image id, score, box [4] original
    pixels)]}, speed stats, [(image id, boxes, scores, labels)] of the first images)."""
    model.eval()
    dets: dict[str, list] = {c: [] for c in classes}
    keep_for_figure, seen, start = [], 0, time.perf_counter()
    for item in tqdm(loader, desc="detect: test", unit="img", leave=False, mininterval=2.0):
        if isinstance(item, BadSample):
            skips.update([item])
            continue
        x = batch_input(model.trunk, [item["image"]], device)
        props = item["proposals"].to(device)
        logits, deltas = model(x, [props])
        boxes, scores, labels = (t.cpu() for t in postprocess(logits, deltas, props, item["scale"], item["size"], cfg))
        for b, s, l in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            dets[classes[l - 1]].append((item["image_id"], s, b))
        if len(keep_for_figure) < 8:
            keep_for_figure.append((item["image_id"], boxes, scores, labels))
        seen += 1
    elapsed = time.perf_counter() - start
    return dets, {"test_images": seen, "test_seconds": elapsed, "test_images_per_s": seen / max(elapsed, 1e-9)}, \
        keep_for_figure


def random_detections(records, classes: list[str], cfg: TestConfig, seed: int = 0) -> dict[str, list]:
    """The random-box baseline: each test image's own proposals with random class
    probabilities (uniform on the simplex), through the same NMS and cap as the model."""
    g = torch.Generator().manual_seed(seed)
    dets: dict[str, list] = {c: [] for c in classes}
    for r in records:
        props = torch.from_numpy(r.proposals)
        logits = -torch.log(torch.rand(len(props), len(classes) + 1, generator=g))  # [P, K+1]
        probs = logits / logits.sum(1, keepdim=True)                                 # Dirichlet(1)
        boxes, scores, labels = postprocess(probs.log(), torch.zeros(len(props), 4 * (len(classes) + 1)), props,
                                            1.0, (r.height, r.width), cfg)
        for b, s, l in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            dets[classes[l - 1]].append((r.image_id, s, b))
    return dets
