"""A conditional gated PixelCNN over C quantised channels (van den Oord et al. 2016,
"Conditional Image Generation with PixelCNN Decoders"), shared by PixColor (Guadarrama
et al. 2017, ``pixcolor``) and Royer et al. 2017 (``royer``).

Order: raster over pixels, and at each pixel channel 0 before channel 1 ... (PixColor:
(Cr, Cb)). Logit (c, y, x) may read the target at every pixel before (y, x) (all
channels), channels < c at (y, x), and the conditioning anywhere.

Architecture (gated, two stacks, so no blind spot):

* input: the target one-hot, [N, C*bins, h, w], channel c in slots c*bins..(c+1)*bins;
* vertical stack: a (k//2+1) x k convolution over rows y-k//2..y (zero-padded above
  and at the sides) -> pre-activation [N,2H,h,w] that sees rows <= y; it reaches the
  horizontal stack only shifted down one row (rows <= y-1), so the whole current row,
  including pixels to the right, is never read;
* horizontal stack: a 1 x (k//2+1) convolution over columns x-k//2..x of the current
  row; its last tap (the current pixel) is channel-group masked: hidden features are
  split into C groups (group g: the features that predict channel g) and group g reads
  input channels < g in the first layer (mask "A") and hidden groups <= g after it
  (mask "B"); a masked 1x1 convolution and a residual connection follow (van den Oord's
  gated layer);
* gates: tanh(a) * sigmoid(b), a and b in the same group, on both stacks;
* conditioning: ONE 1x1 convolution maps cond [N,Cc,h,w] to every layer's vertical and
  horizontal terms (2 x 2H channels per layer), added to the pre-activations; so
  sampling computes it once per call (``condition``);
* output: ReLU, masked 1x1 (B) H -> H, ReLU, masked 1x1 H -> C*bins where channel c's
  logits read hidden groups <= c, i.e. input channels < c at the current pixel.

No normalisation layers: batch statistics would mix pixels across the raster order.

Sampling (``sample``) is exact and incremental: the per-layer conditioning terms are
computed once; after a row is complete its vertical-stack row is computed once per
layer (a (k//2+1) x w window); for each (y, x, c) only column x of the horizontal stack
is computed, from each layer's cached inputs at columns x-k//2..x (earlier columns are
final once their pixel is complete: no feature at a pixel reads that pixel's last
channel), as matrix products on [N, features] (a conv2d call on a 1-pixel output costs
far more than its arithmetic); the head computes channel c's logits only. The categorical
draw uses uniforms drawn up front ([N,C,h,w] from ``generator``) and the inverse CDF,
so ``reference_sample`` (the whole network at every step) draws the same values.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def channel_groups(n: int, groups: int, halves: int = 1) -> torch.Tensor:
    """Group index of each of ``n`` feature channels: ``halves`` equal halves (the gate's
    tanh | sigmoid parts) each split into ``groups`` contiguous groups. long [n]."""
    per_half = n // halves
    return torch.arange(n) % per_half * groups // per_half


def group_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, strict: bool) -> torch.Tensor:
    """[out, in] float: 1 where output group g may read input group g' (g' < g if strict, else g' <= g)."""
    o, i = out_groups[:, None], in_groups[None, :]
    return ((i < o) if strict else (i <= o)).float()


class MaskedConv2d(nn.Conv2d):
    """A convolution whose weight is multiplied by a fixed 0/1 mask (a non-persistent buffer)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], mask: torch.Tensor):
        super().__init__(cin, cout, kernel)
        self.register_buffer("mask", mask.expand_as(self.weight).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias)


def gate(x: torch.Tensor) -> torch.Tensor:
    """[N,2H,...] -> tanh(first half) * sigmoid(second half) [N,H,...]."""
    a, b = x.chunk(2, 1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer: (vertical, horizontal) [N,cin,h,w] -> (vertical, horizontal) [N,H,h,w]."""

    def __init__(self, cin: int, hidden: int, kernel: int, in_groups: torch.Tensor, channels: int, first: bool):
        super().__init__()
        self.pad, self.first = kernel // 2, first
        out2 = channel_groups(2 * hidden, channels, halves=2)
        self.v_conv = nn.Conv2d(cin, 2 * hidden, (self.pad + 1, kernel))
        self.v_to_h = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        h_mask = torch.ones(2 * hidden, cin, 1, self.pad + 1)
        h_mask[:, :, 0, -1] = group_mask(out2, in_groups, strict=first)  # the current pixel's tap
        self.h_conv = MaskedConv2d(cin, 2 * hidden, (1, self.pad + 1), h_mask)
        hid = channel_groups(hidden, channels)
        self.h_out = MaskedConv2d(hidden, hidden, (1, 1), group_mask(hid, hid, strict=False)[:, :, None, None])

    def vertical(self, v: torch.Tensor, cond_v: torch.Tensor) -> torch.Tensor:
        """Pre-activation of the vertical stack: [N,2H,h',w] for the last h' rows of ``v`` given
        the pad rows above them (zeros above the image), cond_v on those rows."""
        p = self.pad
        return self.v_conv(F.pad(v, (p, p, 0, 0))) + cond_v

    def horizontal(self, h: torch.Tensor, v_link: torch.Tensor, cond_h: torch.Tensor) -> torch.Tensor:
        """h [N,cin,r,w'] (zero-padded on the left here), v_link = v_to_h(vertical of the row
        above) -> new horizontal [N,H,r,w']."""
        pre = self.h_conv(F.pad(h, (self.pad, 0, 0, 0))) + v_link + cond_h
        out = self.h_out(gate(pre))
        return out if self.first else out + h

    def step_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For one output column: the masked horizontal convolution as a matrix on the window of
        columns x-p..x flattened column-major, [(p+1)*cin, 2H], and h_out's matrix [H, H]."""
        weight = (self.h_conv.weight * self.h_conv.mask)[:, :, 0, :]  # [2H,cin,p+1]
        return weight.permute(2, 1, 0).reshape(-1, weight.shape[0]), _matrix(self.h_out)

    def forward(self, v, h, cond_v, cond_h):
        v_pre = self.vertical(F.pad(v, (0, 0, self.pad, 0)), cond_v)  # rows <= y
        link = self.v_to_h(F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1])      # rows <= y-1
        return gate(v_pre), self.horizontal(h, link, cond_h)


class ConditionalPixelCNN(nn.Module):
    """Gated conditional PixelCNN over ``channels`` channels of ``bins`` classes (see the module doc)."""

    def __init__(self, channels: int, bins: int, cond_channels: int, hidden: int = 64,
                 layers: int = 4, kernel: int = 5):
        super().__init__()
        if channels < 1 or bins < 2 or cond_channels < 1 or layers < 1:
            raise ValueError(f"pixelcnn: channels, cond_channels, layers must be >= 1 and bins >= 2; got "
                             f"{channels}, {cond_channels}, {layers}, {bins}")
        if hidden % channels or hidden < channels:
            raise ValueError(f"pixelcnn: hidden ({hidden}) must be a positive multiple of channels ({channels})")
        if kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"pixelcnn: kernel must be odd and >= 3, got {kernel}")
        self.channels, self.bins, self.cond_channels = int(channels), int(bins), int(cond_channels)
        self.hidden, self.kernel = int(hidden), int(kernel)
        in_groups = torch.arange(channels * bins) // bins
        hid = channel_groups(hidden, channels)
        self.layers = nn.ModuleList(
            GatedLayer(channels * bins if i == 0 else hidden, hidden, kernel, in_groups if i == 0 else hid,
                       channels, first=i == 0) for i in range(layers))
        self.cond_proj = nn.Conv2d(cond_channels, layers * 4 * hidden, 1)  # per layer: vertical 2H | horizontal 2H
        self.out1 = MaskedConv2d(hidden, hidden, (1, 1), group_mask(hid, hid, strict=False)[:, :, None, None])
        out_groups = torch.arange(channels * bins) // bins
        self.out2 = MaskedConv2d(hidden, channels * bins, (1, 1), group_mask(out_groups, hid, strict=False)[:, :, None, None])

    # -- teacher forcing -----------------------------------------------------------------------
    def one_hot(self, target: torch.Tensor) -> torch.Tensor:
        """target long [N,C,h,w] in [0,bins) -> one-hot float [N,C,bins,h,w]."""
        if target.dtype != torch.long or target.dim() != 4 or target.shape[1] != self.channels:
            raise ValueError(f"pixelcnn: target must be long [N,{self.channels},h,w], got {target.dtype} "
                             f"{list(target.shape)}")
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.bins):
            raise ValueError(f"pixelcnn: target values must be in [0, {self.bins}), got "
                             f"[{int(target.min())}, {int(target.max())}]")
        return F.one_hot(target, self.bins).permute(0, 1, 4, 2, 3).float()

    def condition(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """cond [N,Cc,h,w] -> per layer (vertical term, horizontal term), each [N,2H,h,w]."""
        if cond.dim() != 4 or cond.shape[1] != self.cond_channels:
            raise ValueError(f"pixelcnn: cond must be [N,{self.cond_channels},h,w], got {list(cond.shape)}")
        terms = self.cond_proj(cond).chunk(2 * len(self.layers), 1)
        return [(terms[2 * i], terms[2 * i + 1]) for i in range(len(self.layers))]

    def logits_from_one_hot(self, one_hot: torch.Tensor, cond: torch.Tensor | list) -> torch.Tensor:
        """one_hot [N,C,bins,h,w] (float; differentiable, for the mask tests), cond [N,Cc,h,w]
        or ``condition(cond)`` -> logits [N,C,bins,h,w]."""
        n, c, k, h, w = one_hot.shape
        terms = self.condition(cond) if isinstance(cond, torch.Tensor) else cond
        if terms[0][0].shape[-2:] != (h, w):
            raise ValueError(f"pixelcnn: cond is {list(terms[0][0].shape[-2:])}, target {[h, w]}: same h, w needed")
        v = hz = one_hot.reshape(n, c * k, h, w)
        for layer, (cv, ch) in zip(self.layers, terms):
            v, hz = layer(v, hz, cv, ch)
        return self.head_out(hz).view(n, c, k, h, w)

    def head_out(self, hz: torch.Tensor) -> torch.Tensor:
        """Final horizontal features [N,H,...] -> logits [N,C*bins,...]."""
        return self.out2(F.relu(self.out1(F.relu(hz))))

    def forward(self, target: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: target [N,C,h,w] in [0,bins), cond [N,cond_channels,h,w]
        -> logits [N,C,bins,h,w]. Output (c, y, x) depends on the target at pixels before
        (y, x) in raster order (all channels) and on channels < c at (y, x) only; on cond anywhere."""
        return self.logits_from_one_hot(self.one_hot(target), cond)

    def loss(self, target: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean per-pixel cross-entropy (scalar) over N, C, h, w; ``mask`` bool [N]: only those
        images (none: a zero that still backpropagates)."""
        ce = F.cross_entropy(self(target, cond).transpose(1, 2), target, reduction="none")  # [N,C,h,w]
        if mask is None:
            return ce.mean()
        return ce[mask].mean() if mask.any() else ce.sum() * 0.0

    # -- sampling ----------------------------------------------------------------------------
    def draw_uniforms(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The draws of one sampling call: uniform [N,C,h,w] (CPU generator, then cond's device)."""
        n, _, h, w = cond.shape
        return torch.rand((n, self.channels, h, w), generator=generator).to(cond.device)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """cond [N,cond_channels,h,w] -> target [N,C,h,w]; channel 0 first at each pixel.
        Callers batch several samples per image by repeating cond along N."""
        return self.sample_with(self.condition(cond), self.draw_uniforms(cond, generator), temperature)

    @torch.no_grad()
    def sample_with(self, terms: list, uniforms: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The incremental sampler on precomputed ``condition`` terms and draws [N,C,h,w]."""
        _check_temperature(temperature)
        n, c, h, w = uniforms.shape
        k, p = self.bins, self.kernel // 2
        mats = [layer.step_matrices() for layer in self.layers]
        m1, b1 = _matrix(self.out1), self.out1.bias
        m2, b2 = _matrix(self.out2), self.out2.bias
        # each layer's horizontal INPUT along the current row, p zero columns on the left: [N,p+w,cin]
        rows = [uniforms.new_zeros(n, p + w, layer.h_conv.in_channels) for layer in self.layers]
        v_in = uniforms.new_zeros(n, c * k, h, w)  # the one-hot so far (the vertical stack's input)
        v_maps = [uniforms.new_zeros(n, layer.v_conv.out_channels // 2, h, w) for layer in self.layers]
        # per layer, the row's horizontal bias [N,w,2H]: conv bias + v_to_h(vertical of the row above) + cond
        link = [layer.v_to_h(uniforms.new_zeros(n, layer.v_to_h.in_channels, 1, w)) for layer in self.layers]
        batch = torch.arange(n, device=uniforms.device)
        out = torch.zeros(n, c, h, w, dtype=torch.long, device=uniforms.device)
        for y in range(h):
            bias = [(li + t[1][:, :, y:y + 1] + layer.h_conv.bias[:, None, None])[:, :, 0].transpose(1, 2)
                    for layer, li, t in zip(self.layers, link, terms)]
            rows[0].zero_()
            for x in range(w):
                for ch in range(c):
                    for i, (layer, (mh, mo)) in enumerate(zip(self.layers, mats)):
                        window = rows[i][:, x:x + p + 1].reshape(n, -1)  # columns x-p..x: [N,(p+1)*cin]
                        g = gate(torch.addmm(bias[i][:, x], window, mh))  # [N,H]
                        hz = torch.addmm(layer.h_out.bias, g, mo)
                        if not layer.first:
                            hz += rows[i][:, p + x]
                        if i + 1 < len(rows):
                            rows[i + 1][:, p + x] = hz
                    r = F.relu(torch.addmm(b1, F.relu(hz), m1))
                    logits = torch.addmm(b2[ch * k:(ch + 1) * k], r, m2[:, ch * k:(ch + 1) * k])  # [N,bins]
                    value = _inverse_cdf(logits, uniforms[:, ch, y, x], temperature)
                    out[:, ch, y, x] = value
                    rows[0][batch, p + x, ch * k + value] = 1.0
            v_in[:, :, y] = rows[0][:, p:].transpose(1, 2)
            v = v_in  # the row is complete: its vertical row, layer by layer
            for i, layer in enumerate(self.layers):
                rows_above = F.pad(v[:, :, max(0, y - p):y + 1], (0, 0, max(0, p - y), 0))  # rows y-p..y, zeros above
                pre = layer.vertical(rows_above, terms[i][0][:, :, y:y + 1])  # [N,2H,1,w]
                v_maps[i][:, :, y:y + 1] = gate(pre)
                link[i] = layer.v_to_h(pre)
                v = v_maps[i]
        return out


def _matrix(conv: nn.Conv2d) -> torch.Tensor:
    """A (masked) 1x1 convolution's weight as a matrix for ``x @ M``: [cin, cout]."""
    weight = conv.weight * conv.mask if isinstance(conv, MaskedConv2d) else conv.weight
    return weight[:, :, 0, 0].T


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"pixelcnn: temperature must be > 0, got {temperature}")


def _inverse_cdf(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """A categorical draw per row: logits [N,K], uniforms u [N] -> long [N] (the first class
    whose cumulative probability at ``temperature`` exceeds u)."""
    cdf = torch.softmax(logits.float() / temperature, -1).cumsum(-1)
    return (cdf < u[:, None]).sum(-1).clamp_max(logits.shape[-1] - 1)


@torch.no_grad()
def reference_sample(model: ConditionalPixelCNN, condition: Callable[[], torch.Tensor], uniforms: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """The naive sampler (the specification ``sample_with`` must equal): at every (y, x, c)
    the conditioning ``condition()`` -> cond [N,Cc,h,w] is recomputed and the whole network
    run on the whole image. uniforms [N,C,h,w] as ``draw_uniforms`` -> target [N,C,h,w]."""
    _check_temperature(temperature)
    n, c, h, w = uniforms.shape
    target = torch.zeros(n, c, h, w, dtype=torch.long, device=uniforms.device)
    for y in range(h):
        for x in range(w):
            for ch in range(c):
                logits = model(target, condition())[:, ch, :, y, x]  # [N,bins]
                target[:, ch, y, x] = _inverse_cdf(logits, uniforms[:, ch, y, x], temperature)
    return target
