"""The conditional gated PixelCNN (pretext.methods.pixelcnn): causality by gradients, the
incremental sampler against the naive one, reproducible draws, a hand-computed loss."""
import math

import pytest
import torch

from pretext.methods.pixelcnn import ConditionalPixelCNN, _inverse_cdf, reference_sample


def _model(channels=2, bins=4, hidden=16, layers=3, kernel=3, seed=0):
    torch.manual_seed(seed)
    return ConditionalPixelCNN(channels, bins, cond_channels=3, hidden=hidden, layers=layers, kernel=kernel)


def _dependence(model, h=5, w=7, n=2, seed=1):
    """|d logits[:, c, :, y, x] / d one-hot| summed over the batch and bins, for every output
    (c, y, x): [C,h,w (output), C,h,w (input)]."""
    g = torch.Generator().manual_seed(seed)
    c = model.channels
    target = torch.randint(0, model.bins, (n, c, h, w), generator=g)
    cond = torch.randn(n, 3, h, w, generator=g)
    one_hot = model.one_hot(target).requires_grad_(True)
    logits = model.logits_from_one_hot(one_hot, cond)
    dep = torch.zeros(c, h, w, c, h, w)
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                (grad,) = torch.autograd.grad(logits[:, ch, :, y, x].sum(), one_hot, retain_graph=True)
                dep[ch, y, x] = grad.abs().sum((0, 2))
    return dep


@pytest.mark.parametrize("channels,kernel", [(2, 3), (3, 5)])
def test_no_output_depends_on_a_later_pixel_or_channel(one_thread, channels, kernel):
    model = _model(channels=channels, hidden=6 * channels, kernel=kernel)
    dep = _dependence(model)
    c, h, w = dep.shape[:3]
    for oc in range(c):
        for y in range(h):
            for x in range(w):
                for ic in range(c):
                    # later in raster order, or the same pixel at a channel >= oc: exactly zero
                    later = torch.zeros(h, w, dtype=torch.bool)
                    later.view(-1)[y * w + x + 1:] = True
                    later[y, x] = ic >= oc
                    assert torch.all(dep[oc, y, x, ic][later] == 0), (oc, y, x, ic)


def test_earlier_pixels_and_channels_are_read_without_a_blind_spot(one_thread):
    dep = _dependence(_model(hidden=32))
    y, x = 3, 3
    # the pixel to the left, the one above, and (no blind spot: van den Oord et al. 2016)
    # the pixel above and to the right all reach both channels at (3, 3)
    for oc in range(2):
        for (yy, xx) in [(3, 2), (2, 3), (2, 4), (2, 5)]:
            assert dep[oc, y, x, :, yy, xx].sum() > 0, (oc, yy, xx)
    assert dep[1, y, x, 0, y, x] > 0  # channel 1 reads channel 0 at its own pixel
    assert dep[0, 0, 0].sum() == 0  # the first value reads no target at all (only cond)


def test_cond_reaches_everywhere_and_changes_logits(one_thread):
    model = _model()
    target = torch.randint(0, 4, (1, 2, 4, 4))
    cond = torch.randn(1, 3, 4, 4, requires_grad=True)
    logits = model(target, cond)
    (grad,) = torch.autograd.grad(logits[:, 0, :, 0, 0].sum(), cond)
    assert grad.abs().sum() > 0


def test_incremental_sampler_equals_the_naive_one(one_thread):
    model = _model(hidden=16, layers=3, kernel=5, seed=3)
    cond = torch.randn(3, 3, 7, 9, generator=torch.Generator().manual_seed(0))
    u = model.draw_uniforms(cond, torch.Generator().manual_seed(5))
    calls = []

    def condition():
        calls.append(1)
        return cond
    fast = model.sample_with(model.condition(cond), u)
    slow = reference_sample(model, condition, u)
    assert torch.equal(fast, slow)
    assert len(calls) == 7 * 9 * 2  # the reference recomputes the conditioning at every step
    assert fast.unique().numel() > 1  # a real draw, not a constant image


def test_sample_is_reproducible_in_range_and_leaves_the_global_rng(one_thread):
    model = _model(bins=5)
    cond = torch.randn(4, 3, 6, 6)
    state = torch.get_rng_state()
    a = model.sample(cond, generator=torch.Generator().manual_seed(7))
    b = model.sample(cond, generator=torch.Generator().manual_seed(7))
    c = model.sample(cond, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == (4, 2, 6, 6) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 5
    # the same cond repeated along N gives different samples (independent draws per row)
    rep = model.sample(cond[:1].expand(3, -1, -1, -1), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(rep[0], rep[1]) and not torch.equal(rep[1], rep[2])


def test_inverse_cdf_hand_case_and_temperature():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]])).expand(4, 3)
    u = torch.tensor([0.1, 0.45, 0.51, 0.999])
    assert _inverse_cdf(logits, u, 1.0).tolist() == [0, 1, 2, 2]  # cdf = 0.2, 0.5, 1.0
    # T = 0.5 squares the probabilities: 0.04, 0.09, 0.25 over 0.38 -> cdf 0.105, 0.342, 1
    assert _inverse_cdf(logits, u, 0.5).tolist() == [0, 2, 2, 2]
    model = _model()
    with pytest.raises(ValueError, match="temperature"):
        model.sample(torch.zeros(1, 3, 2, 2), temperature=0.0)


def test_loss_hand_computed():
    """out2 zeroed: the logits are its bias. Channel 0: bias (0, ln 3) -> p = (1/4, 3/4), target
    1 -> CE ln(4/3); channel 1: bias (0, 0), target 0 -> ln 2. Mean ((ln 4/3 + ln 2) / 2)."""
    model = _model(bins=2, hidden=4)
    with torch.no_grad():
        model.out2.weight.zero_()
        model.out2.bias.copy_(torch.tensor([0.0, math.log(3.0), 0.0, 0.0]))
    target = torch.zeros(2, 2, 3, 3, dtype=torch.long)
    target[:, 0] = 1
    cond = torch.randn(2, 3, 3, 3)
    expected = (math.log(4 / 3) + math.log(2)) / 2
    assert model.loss(target, cond).item() == pytest.approx(expected, abs=1e-6)
    target[1, 0] = 0  # image 1 now costs (ln 4 + ln 2) / 2; masked out it does not count
    assert model.loss(target, cond, mask=torch.tensor([True, False])).item() == pytest.approx(expected, abs=1e-6)
    both = (expected + (math.log(4) + math.log(2)) / 2) / 2
    assert model.loss(target, cond).item() == pytest.approx(both, abs=1e-6)
    empty = model.loss(target, cond, mask=torch.tensor([False, False]))
    empty.backward()
    assert empty.item() == 0.0


def test_teacher_forcing_learns_a_within_pixel_dependency(one_thread):
    """Channel 0 uniform noise, channel 1 = channel 0: only the within-pixel link (mask "A" ->
    "B" groups) can predict channel 1; its CE must fall far below ln(bins)."""
    model = _model(bins=4, hidden=16, layers=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    cond = torch.zeros(8, 3, 4, 4)
    for _ in range(150):
        t0 = torch.randint(0, 4, (8, 1, 4, 4), generator=g)
        target = torch.cat([t0, t0], 1)
        logits = model(target, cond)
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean((0, 2, 3))
        opt.zero_grad()
        ce.sum().backward()
        opt.step()
    assert ce[1].item() < 0.2 and ce[0].item() > 0.8 * math.log(4)  # channel 0 stays unpredictable


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="multiple of channels"):
        ConditionalPixelCNN(2, 4, 3, hidden=15)
    with pytest.raises(ValueError, match="kernel"):
        ConditionalPixelCNN(2, 4, 3, kernel=4)
    model = _model()
    with pytest.raises(ValueError, match=r"values must be in \[0, 4\)"):
        model(torch.full((1, 2, 3, 3), 4), torch.zeros(1, 3, 3, 3))
    with pytest.raises(ValueError, match="same h, w"):
        model(torch.zeros(1, 2, 3, 3, dtype=torch.long), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="cond must be"):
        model(torch.zeros(1, 2, 3, 3, dtype=torch.long), torch.zeros(1, 5, 3, 3))
