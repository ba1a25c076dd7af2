"""Liang, Su, Xiao, Guo, Luo, "Deep patch-wise colorization model for grayscale images"
(SIGGRAPH Asia 2016 Technical Briefs): patch-wise U / V regression in YUV, tiled over
the image, refined by a guided filter.

Our reading of the paper (only its abstract and introduction were readable with the
search tools here; the issue's summary gives the rest), with the choices it leaves open:

* Colour space: YUV (``kornia.color.rgb_to_yuv``: U in [-0.436, 0.436], V in
  [-0.615, 0.615]). The networks' input is the suite's gray channel, the normalised L
  (the trunk contract; a monotone function of luminance, like Y); targets are U and V,
  normalised per channel to [0, 1] (``normalise_uv``), predicted through a sigmoid.
* Patches: a random 64 x 64 patch per training image (``patch``); the networks keep the
  patch size ("same" padding) and the loss reads only the centre 56 x 56 (``core``),
  so the 4-pixel border is context only.
* Two networks of the same design, one for U and one for V: the ``liang_cc`` trunk
  (``pretext.encoders.liang``, conv1-3: 11x11 / 4x4 / 3x3, the two networks side by
  side as groups) and this method's ``head``, their 1x1 output convs (groups = 2).
* Losses: "alternately apply two loss metric functions": the mean squared error alone
  for the first ``mse_iterations`` (100) iterations, then one iteration of the log loss
  and one of MSE in turn (log loss at step 100, 102, ...). "Log loss" read as the
  logistic (binary cross-entropy) loss of the sigmoid output against the normalised
  U / V as soft targets (sklearn's ``log_loss`` meaning); both are averaged over the
  patch core's pixels and both channels, over the images with colour.
* Full images: the normalised L is padded by the border (edge replication) and to a
  multiple of 56, cut into 64 x 64 patches at stride 56 (``F.unfold``), each patch's
  centre 56 x 56 kept and the tiles put back (``F.fold``).
* Refinement: a guided filter on U and V with the gray image (its sRGB level, which is
  its luma Y) as guide, radius 40, eps 1e-4 (``cv2.ximgproc.guidedFilter``, guide in
  [0, 1]); ``guided_radius: 0`` turns it off.
* Output: Y (the gray image) + predicted U, V -> RGB (``kornia.color.yuv_to_rgb``,
  clipped) -> Lab (``pretext.color.lab``): ``predict_ab`` returns Lab ab at full input
  resolution, so eval-color scores it as any other method.

The method needs its own trunk (``liang_cc``): a patch model at stride 1 on another
trunk is not Liang et al.'s design.
"""
from __future__ import annotations

import cv2
import kornia.color
import torch
import torch.nn.functional as F
from torch import nn

from pretext.color.lab import lab_to_rgb, rgb_to_lab
from pretext.color.losses import colorful_mask
from pretext.encoders import normalize_l
from pretext.methods.base import Method, StepContext, ValidationOutput, register_method

UV_MAX = (0.436, 0.615)  # |U|, |V| bounds of kornia's YUV for sRGB in [0,1]
LOSSES = ("mse", "log")


def normalise_uv(uv: torch.Tensor) -> torch.Tensor:
    """U, V [N,2,H,W] -> [0,1] per channel."""
    return uv / (2 * uv.new_tensor(UV_MAX)[None, :, None, None]) + 0.5


def denormalise_uv(y: torch.Tensor) -> torch.Tensor:
    return (y - 0.5) * 2 * y.new_tensor(UV_MAX)[None, :, None, None]


def loss_kind(step: int, mse_iterations: int = 100) -> str:
    """MSE for the first ``mse_iterations`` steps, then log loss and MSE in turn."""
    return "log" if step >= mse_iterations and (step - mse_iterations) % 2 == 0 else "mse"


def patch_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, mask: torch.Tensor) -> torch.Tensor:
    """logits, normalised target [N,2,h,w] -> MSE of sigmoid(logits) (``mse``) or binary
    cross-entropy (``log``), mean over pixels and channels, then over ``mask`` [N]."""
    if kind == "mse":
        per_image = (torch.sigmoid(logits) - target).pow(2).mean((1, 2, 3))
    elif kind == "log":
        per_image = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2, 3))
    else:
        raise ValueError(f"loss kind must be one of {LOSSES}, got {kind!r}")
    return per_image[mask].mean() if mask.any() else logits.sum() * 0.0


def guided_refine(uv: torch.Tensor, guide: torch.Tensor, radius: int = 40, eps: float = 1e-4) -> torch.Tensor:
    """Guided filter (He et al.) of each U / V map [N,2,H,W] with the gray image [N,1,H,W]
    in [0,1] as guide; same shape and device out."""
    out = torch.empty_like(uv)
    for i in range(uv.shape[0]):
        g = guide[i, 0].detach().float().cpu().numpy()
        for c in range(uv.shape[1]):
            src = uv[i, c].detach().float().cpu().numpy()
            out[i, c] = torch.from_numpy(cv2.ximgproc.guidedFilter(g, src, int(radius), float(eps)))
    return out


@register_method("liang_patch")
class LiangPatch(Method):
    summary = ("Liang et al. 2016 · MSE, then MSE / log loss in turn, on the centre 56x56 U and V of 64x64 Y "
               "patches · YUV tiles -> guided filter -> ab")
    decoders = ()  # U / V regression: one deterministic output

    def __init__(self, trunk: nn.Module, patch: int = 64, core: int = 56, mse_iterations: int = 100,
                 guided_radius: int = 40, guided_eps: float = 1e-4, tile_batch: int = 256):
        super().__init__(trunk)
        if trunk.encoder_name != "liang_cc":
            raise ValueError(f"liang_patch is a patch-wise model with its own stride-1 networks: use encoder "
                             f"liang_cc (got {trunk.encoder_name})")
        if not 0 < core <= patch or (patch - core) % 2:
            raise ValueError(f"liang_patch: core must be in (0, patch] with an even border, got patch {patch}, core {core}")
        self.patch, self.core, self.border = int(patch), int(core), (int(patch) - int(core)) // 2
        self.mse_iterations, self.guided_radius, self.guided_eps = int(mse_iterations), int(guided_radius), guided_eps
        self.tile_batch = int(tile_batch)
        cin = trunk.feature_info[trunk.taps[-1]]["channels"]
        self.head = nn.Conv2d(cin, 2, 1, groups=2)  # conv4 1x1 of the U network | of the V network

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return h, w

    def logits(self, lightness: torch.Tensor) -> torch.Tensor:
        """Normalised L [N,1,H,W] -> U, V logits [N,2,H,W] (one pass, no tiling)."""
        return self.head(self.trunk(lightness))

    # -- training ------------------------------------------------------------------------
    def sample_patches(self, lightness: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A random patch per image: L [n,1,p,p] and the normalised U, V of its core
        [n,2,c,c]. Offsets come from torch's global generator (checkpointed: resume is exact)."""
        n, _, h, w = lightness.shape
        p, b, c = self.patch, self.border, self.core
        if h < p or w < p:
            raise ValueError(f"liang_patch trains on {p}x{p} patches: the training crops are {h}x{w} "
                             f"(set data.crop >= {p})")
        top = torch.randint(0, h - p + 1, (n,)).tolist()
        left = torch.randint(0, w - p + 1, (n,)).tolist()
        x = torch.stack([lightness[i, :, t:t + p, s:s + p] for i, (t, s) in enumerate(zip(top, left))])
        y = torch.stack([uv[i, :, t + b:t + b + c, s + b:s + b + c] for i, (t, s) in enumerate(zip(top, left))])
        return x, y

    def _inputs(self, images: torch.Tensor, device: torch.device):
        """uint8 RGB [n,3,H,W] -> normalised L [n,1,H,W], normalised U, V [n,2,H,W], Lab ab [n,2,H,W]."""
        if images.shape[0] == 0:  # every file of this micro-batch was unreadable: one gray image, masked out
            images = torch.zeros(1, 3, self.patch, self.patch, dtype=torch.uint8)
        rgb = images.to(device).float().div_(255.0)
        lab = rgb_to_lab(rgb)
        uv = normalise_uv(kornia.color.rgb_to_yuv(rgb)[:, 1:])
        return normalize_l(lab[:, :1]), uv, lab[:, 1:]

    def forward(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        lightness, uv, ab = self._inputs(batch["image"], ctx.device)
        mask = colorful_mask(ab)
        x, target = self.sample_patches(lightness, uv)  # [n,1,64,64], [n,2,56,56]
        b, c = self.border, self.core
        with ctx.autocast():
            out = self.logits(x)[..., b:b + c, b:b + c]  # [n,2,56,56]
        loss = patch_loss(out.float(), target, loss_kind(ctx.step, self.mse_iterations), mask)
        return loss, {"colourful": int(mask.sum())}

    # -- full images -----------------------------------------------------------------------
    def tile_logits(self, lightness: torch.Tensor) -> torch.Tensor:
        """Normalised L [N,1,H,W] -> U, V logits [N,2,H,W], patch by patch: each 64 x 64
        patch (stride 56) gives its centre 56 x 56."""
        n, _, h, w = lightness.shape
        p, b, c = self.patch, self.border, self.core
        rows, cols = -(-h // c), -(-w // c)
        padded = F.pad(lightness, (b, b + cols * c - w, b, b + rows * c - h), mode="replicate")
        patches = F.unfold(padded, p, stride=c)  # [N, p*p, rows*cols]
        patches = patches.transpose(1, 2).reshape(-1, 1, p, p)  # [N*rows*cols, 1, p, p]
        cores = torch.cat([self.logits(chunk)[..., b:b + c, b:b + c] for chunk in patches.split(self.tile_batch)])
        cores = cores.reshape(n, rows * cols, 2 * c * c).transpose(1, 2)  # [N, 2*c*c, rows*cols]
        return F.fold(cores, (rows * c, cols * c), c, stride=c)[..., :h, :w]  # [N,2,H,W]

    def to_ab(self, lightness: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Normalised L [N,1,H,W] + U, V logits -> (guided filter) -> Lab ab [N,2,H,W]."""
        lab_gray = torch.cat([(lightness.float() + 0.5) * 100.0, torch.zeros_like(logits, dtype=torch.float32)], 1)
        y = lab_to_rgb(lab_gray)[:, :1]  # [N,1,H,W]: a gray pixel's sRGB level is its luma Y
        uv = denormalise_uv(torch.sigmoid(logits.float()))
        if self.guided_radius > 0:
            uv = guided_refine(uv, y, self.guided_radius, self.guided_eps)
        rgb = kornia.color.yuv_to_rgb(torch.cat([y, uv], 1)).clamp(0.0, 1.0)
        return rgb_to_lab(rgb)[:, 1:]

    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor, decoder: str = "annealed", **options) -> torch.Tensor:
        """Normalised L [N,1,H,W] -> Lab ab [N,2,H,W] (``decoder`` is ignored: a regression)."""
        if options:
            raise ValueError(f"liang_patch: unknown colorize options {sorted(options)}")
        return self.to_ab(lightness, self.tile_logits(lightness))

    @torch.no_grad()
    def validation_step(self, batch: dict, ctx: StepContext) -> ValidationOutput | None:
        """Both losses on the tiled full images, the gray baseline's MSE (U = V = 0), and
        the refined colorization."""
        lightness, uv, ab = self._inputs(batch["image"], ctx.device)
        mask = colorful_mask(ab)
        if not mask.any():
            return None
        logits = self.tile_logits(lightness)
        n = int(mask.sum())
        mse = float(patch_loss(logits, uv, "mse", mask))
        sums = {"val_loss": mse * n, "val_log_loss": float(patch_loss(logits, uv, "log", mask)) * n,
                "gray_baseline_mse": float(patch_loss(torch.zeros_like(logits), uv, "mse", mask)) * n}
        return ValidationOutput(sums, n, lightness[mask], self.to_ab(lightness, logits)[mask], ab[mask])
