"""Lal et al. 2017: Zhang's colorizer trained with a classification loss and a WGAN critic.

Generator (``Zhang``: any registered trunk + Zhang's head, 313-way distribution per pixel,
ab through the annealed mean, T = 0.38) with three losses,

    L_total = lambda_co * L_co + lambda_cl * L_cl + lambda_g * L_g,

* ``L_co``: Zhang's colorization loss (``loss``: ``full`` = class-rebalanced, the prior
  counted in ``setup`` as Zhang does; or ``class``);
* ``L_cl``: softmax cross-entropy over the data's labels (``batch["label"]``, -1 = none:
  those images take no part; a batch without labels adds 0) of a classification head on
  the generator's last features (the input of the head's last 1x1 convolution: fc7 for
  the ``fc`` / ``released`` heads, the trunk's deepest tap for ``linear``), global
  average pooled -> linear -> ``num_classes``;
* ``L_g = -mean D(L, ab_hat)``: the critic's score of the generated colours, ``ab_hat`` the
  differentiable annealed mean.

Critic ``D`` (``Critic``): a small conv net on (L, ab) images at the generator's output
grid (L area-averaged, the real ab point-sampled as Zhang's targets; ab / 110 so both
channels are O(1)), real vs generated. ``critic="clip"`` (the original WGAN, Arjovsky et
al. 2017): RMSprop, lr 5e-5, every weight clipped to [-clip, clip] (0.01) at
construction and after every critic step; ``critic="gp"`` (Gulrajani et al. 2017):
Adam lr 1e-4, betas (0, 0.9), loss + gp_lambda (10) E[(||grad D(x_hat)||_2 - 1)^2] on
random interpolates. Both optimisers come from ``optimizer_kinds`` (the "critic" group);
the generator keeps the config's Adam. Images without colour (Zhang's rule) take no
part in the colour or adversarial terms; unlabelled ones none in the class term.

One step (``training_step``): ``n_critic`` critic updates on the step's batch (real
ab vs the current generator's colours, computed once without gradients: its BN running
statistics are left untouched, so they move once per step as in Zhang), then one
generator update. Under DDP the generator update runs through the DDP wrapper
(``model(batch, ctx, mode="generator")``: every parameter, critic included, is in that
graph, so DDP's all-reduce sees all of them) and the critic updates call the critic
directly with an explicit all-reduce of its gradients (``sync_gradients``): a critic
loss through the wrapper would leave the generator without gradients, which DDP
(``find_unused_parameters=False``) does not allow.

Defaults: the loss weights follow ChromaGAN (Vitoria et al. 2020, the same
colour + class + WGAN-GP objective): lambda_cl 0.003, lambda_g 0.1 with lambda_co 1; Lal
et al. do not publish values we could check. ``num_classes`` 1000: ImageNet, the pretext
data of the paper-scale configs.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from pretext.color.bins import decode
from pretext.engine import dist
from pretext.methods.base import StepContext, _mean_over_ranks, register_method
from pretext.methods.zhang import Zhang

CRITICS = ("clip", "gp")
AB_SCALE = 110.0  # ab / 110: the critic's ab channels in about [-1, 1], like the normalised L


class Critic(nn.Module):
    """(L, a, b) [N,3,h,w] -> score [N]: conv3x3 -> two stride-2 conv3x3 (channels x2 each),
    LeakyReLU 0.2, no normalisation (a gradient penalty is per image; BN would couple
    them), global average pool, linear. Any h, w >= 1."""

    def __init__(self, channels: int = 64):
        super().__init__()
        c = channels
        self.features = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.LeakyReLU(0.2),
                                      nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                                      nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.score = nn.Linear(4 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x).mean((2, 3))).squeeze(1)  # [N]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [N] (or [N,1]) over mask [N] (bool); 0 (still in the graph) when the mask is empty."""
    if x.numel() != mask.numel():
        raise ValueError(f"masked_mean: one value per image expected, got {list(x.shape)} for {mask.numel()} images")
    x, m = x.reshape(mask.shape), mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """WGAN critic loss E[D(fake)] - E[D(real)] (minimised: the negated Wasserstein estimate)."""
    return masked_mean(d_fake - d_real, mask)


def generator_adversarial_loss(d_fake: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_g = -E[D(fake)]."""
    return -masked_mean(d_fake, mask)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-image (||grad_x D(x)||_2 - 1)^2 at x = eps * real + (1 - eps) * fake, eps [N] in [0, 1];
    differentiable in the critic's parameters (create_graph). Returns [N]."""
    e = eps.view(-1, *[1] * (real.dim() - 1)).to(real)
    x = (e * real + (1 - e) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0) ** 2


def sync_gradients(params) -> None:
    """Average the gradients of ``params`` over ranks (a no-op on one process)."""
    if not dist.is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = dist.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / dist.world_size()
    for g, v in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(v.view_as(g))


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module):
    """Train-mode BN (batch statistics) that leaves its running statistics untouched."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


@register_method("lal_wgan")
class LalWGAN(Zhang):
    summary = ("Lal et al. 2017 · Zhang's 313-bin generator + classification head + WGAN critic on (L, ab) · "
               "rebalanced CE + softmax CE over labels + Wasserstein loss (clipping or gradient penalty)")

    def __init__(self, trunk: nn.Module, loss: str = "full", num_classes: int = 1000, lambda_co: float = 1.0,
                 lambda_cl: float = 0.003, lambda_g: float = 0.1, critic: str = "clip", n_critic: int = 5,
                 clip: float = 0.01, gp_lambda: float = 10.0, critic_lr: float | None = None,
                 critic_channels: int = 64, k: int = 5, sigma: float = 5.0, head: str = "auto", lam: float = 0.5,
                 prior_sigma: float = 5.0, target_sampling: str = "point"):
        if loss not in ("full", "class"):
            raise ValueError(f"lal_wgan: loss must be 'full' or 'class' (the critic sees the annealed mean of the "
                             f"313-bin distribution), got {loss!r}")
        if critic not in CRITICS:
            raise ValueError(f"lal_wgan: critic must be one of {CRITICS}, got {critic!r}")
        if int(n_critic) < 1 or int(num_classes) < 1 or clip <= 0:
            raise ValueError(f"lal_wgan: n_critic ({n_critic}) and num_classes ({num_classes}) must be >= 1, "
                             f"clip ({clip}) > 0")
        super().__init__(trunk, loss=loss, k=k, sigma=sigma, head=head, lam=lam, prior_sigma=prior_sigma,
                         target_sampling=target_sampling)  # Zhang's generator, targets and prior
        self.num_classes, self.n_critic, self.critic_kind = int(num_classes), int(n_critic), critic
        self.lambdas = (float(lambda_co), float(lambda_cl), float(lambda_g))
        self.clip, self.gp_lambda = float(clip), float(gp_lambda)
        self.critic_lr = float(critic_lr) if critic_lr is not None else (5e-5 if critic == "clip" else 1e-4)
        hidden = self.head[-1].in_channels if isinstance(self.head, nn.Sequential) else self.head.in_channels
        self.classifier = nn.Linear(hidden, self.num_classes)
        self.critic = Critic(int(critic_channels))
        self.clip_critic()

    @property
    def record_name(self) -> str:
        return "lal_wgan" if self.critic_kind == "clip" else "lal_wgan-gp"

    # -- optimisers ----------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        critic = {id(p) for p in self.critic.parameters()}
        return {"main": [p for p in self.parameters() if p.requires_grad and id(p) not in critic],
                "critic": list(self.critic.parameters())}

    def optimizer_kinds(self) -> dict[str, dict]:
        if self.critic_kind == "clip":  # Arjovsky et al.: momentum-based optimisers destabilise a clipped critic
            return {"critic": {"kind": "rmsprop", "lr": self.critic_lr}}
        return {"critic": {"kind": "adam", "lr": self.critic_lr, "betas": (0.0, 0.9)}}  # Gulrajani et al.

    @torch.no_grad()
    def clip_critic(self) -> None:
        if self.critic_kind == "clip":
            for p in self.critic.parameters():
                p.clamp_(-self.clip, self.clip)

    # -- the generator -------------------------------------------------------------------
    def generate(self, lightness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised L [N,1,H,W] -> (colour logits [N,313,h,w], class logits [N,num_classes])."""
        feats = self.trunk(lightness)
        hidden = self.head[:-1](feats) if isinstance(self.head, nn.Sequential) else feats  # [N,C,h',w']
        out = self.head[-1](hidden) if isinstance(self.head, nn.Sequential) else self.head(hidden)
        if self.upsample > 1:
            out = F.interpolate(out, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return out, self.classifier(hidden.mean((2, 3)))

    def critic_input(self, pb, ab: torch.Tensor) -> torch.Tensor:
        """(L at the ab grid, ab / AB_SCALE) [N,3,h,w] for ab [N,2,h,w] (float32)."""
        lightness = F.adaptive_avg_pool2d(pb.lightness, ab.shape[2:])
        return torch.cat([lightness, ab.float() / AB_SCALE], 1)

    def prepare(self, batch: dict, device: torch.device):
        """(PretextBatch, labels long [n] on device, -1 = none); an empty micro-batch
        becomes one gray unlabelled image, masked out of every term."""
        images, labels = batch["image"], batch.get("label")
        if images.shape[0] == 0:
            images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
            labels = None
        if labels is None:
            labels = torch.full((images.shape[0],), -1, dtype=torch.long)
        labels = torch.as_tensor(labels, dtype=torch.long).to(device)
        if (labels >= self.num_classes).any():
            raise ValueError(f"lal_wgan: label {int(labels.max())} >= num_classes {self.num_classes}; set "
                             "method_kwargs.num_classes to the data's class count")
        return self._batch(images, device), labels

    def _input(self, pb, ctx: StepContext) -> torch.Tensor:
        return pb.lightness.contiguous(memory_format=torch.channels_last) if ctx.channels_last else pb.lightness

    @torch.no_grad()
    def fake_for_critic(self, pb, ctx: StepContext) -> torch.Tensor:
        """The current generator's critic input [n,3,h,w], without gradients; train-mode
        BN as in the generator step, running statistics untouched."""
        with frozen_running_stats(self), ctx.autocast():
            logits = self.logits(self._input(pb, ctx))
        return self.critic_input(pb, decode(logits.float(), "annealed"))

    # -- losses --------------------------------------------------------------------------
    def forward(self, batch: dict, ctx: StepContext, mode: str = "generator", prepared=None,
                fake: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """``generator``: L_total of one micro-batch and its parts; ``critic``: the critic
        loss on ``fake`` (from ``fake_for_critic``). ``prepared``: ``prepare(batch)``'s result."""
        pb, labels = prepared if prepared is not None else self.prepare(batch, ctx.device)
        if mode == "critic":
            return self._critic_loss(pb, fake)
        if mode != "generator":
            raise ValueError(f"lal_wgan: mode must be 'generator' or 'critic', got {mode!r}")
        with ctx.autocast():
            logits, class_logits = self.generate(self._input(pb, ctx))
        l_co = self._loss(logits, pb)
        labelled = labels >= 0
        ce = F.cross_entropy(class_logits.float(), labels.clamp_min(0), reduction="none")  # [n]
        l_cl = masked_mean(ce, labelled)  # 0 without labels (the classifier still gets a zero gradient)
        d_fake = self.critic(self.critic_input(pb, decode(logits.float(), "annealed")))
        l_g = generator_adversarial_loss(d_fake, pb.mask)
        lco, lcl, lg = self.lambdas
        total = lco * l_co + lcl * l_cl + lg * l_g
        parts = {"loss_co": l_co, "loss_cl": l_cl, "loss_g": l_g}
        return total, {"colourful": int(pb.mask.sum()), "labelled": int(labelled.sum()),
                       **{k: float(v.detach()) for k, v in parts.items()}}

    def _critic_loss(self, pb, fake: torch.Tensor) -> tuple[torch.Tensor, dict]:
        real = self.critic_input(pb, pb.target_ab)  # [n,3,h,w]
        d_real, d_fake = self.critic(real), self.critic(fake)
        loss = critic_loss(d_real, d_fake, pb.mask)
        stats = {"wasserstein": -float(loss.detach())}
        if self.critic_kind == "gp":
            eps = torch.rand(real.shape[0], device=real.device)
            gp = masked_mean(gradient_penalty(self.critic, real, fake, eps), pb.mask)
            loss = loss + self.gp_lambda * gp
            stats["gradient_penalty"] = float(gp.detach())
        return loss, stats

    # -- one step: critic updates, then the generator --------------------------------------
    def training_step(self, micro_batches: list[dict], model: nn.Module,
                      optimizers: dict[str, torch.optim.Optimizer], ctx: StepContext) -> dict[str, float]:
        n = len(micro_batches)
        prepared = [self.prepare(b, ctx.device) for b in micro_batches]
        fakes = [self.fake_for_critic(pb, ctx) for pb, _ in prepared]
        critic_opt, critic_params = optimizers["critic"], list(self.critic.parameters())
        critic_stats: dict[str, float] = {}
        for _ in range(self.n_critic):
            critic_opt.zero_grad(set_to_none=True)
            critic_stats = {}
            for batch, prep, fake in zip(micro_batches, prepared, fakes):
                loss, s = self.forward(batch, ctx, mode="critic", prepared=prep, fake=fake)
                (loss / n).backward()
                for k, v in s.items():
                    critic_stats[k] = critic_stats.get(k, 0.0) + v / n
            sync_gradients(critic_params)  # the critic does not run through the DDP wrapper
            critic_opt.step()
            self.clip_critic()
        # the generator: accumulation as in Method.training_step, through the wrapper
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        total, stats = torch.zeros((), device=ctx.device), {}
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        for i, (batch, prep) in enumerate(zip(micro_batches, prepared)):
            with model.no_sync() if ddp and i < n - 1 else contextlib.nullcontext():
                loss, s = model(batch, ctx, mode="generator", prepared=prep)
                (loss / n).backward()
            total += loss.detach() / n
            for k, v in s.items():  # counts summed, the loss parts averaged over micro-batches
                stats[k] = stats.get(k, 0) + (v / n if k.startswith("loss_") else v)
        ctx.stats = stats
        loss_value = _mean_over_ranks(total)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {ctx.step}; stopping (check the data and lr)")
        opt.step()
        return {"loss": loss_value, **stats, **{f"critic_{k}": v for k, v in critic_stats.items()}}
