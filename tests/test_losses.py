import pytest
import torch

from pretext.color import losses
from pretext.color.bins import soft_encode


def _batch(seed=0, n=2, h=4, w=4):
    g = torch.Generator().manual_seed(seed)
    ab = torch.rand(n, 2, h, w, generator=g) * 120 - 60
    logits = torch.randn(n, 313, h, w, generator=g, dtype=torch.float64)
    return ab, logits


def test_soft_ce_equals_dense_cross_entropy():
    ab, logits = _batch()
    enc = soft_encode(ab)
    dense = enc.dense().double()
    expected = -(dense * logits.log_softmax(1)).sum(1)
    assert torch.allclose(losses.soft_cross_entropy(logits, enc), expected, atol=1e-6)


def test_soft_ce_gradcheck():
    ab, logits = _batch(h=2, w=2)
    enc = soft_encode(ab)
    enc.weights = enc.weights.double()
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: losses.soft_cross_entropy(z, enc).sum(), (logits,))


def test_full_loss_value_is_unweighted_and_gradient_is_weighted():
    ab, logits = _batch()
    enc = soft_encode(ab)
    class_w = torch.rand(313, dtype=torch.float64) * 3 + 0.1
    z1 = logits.clone().requires_grad_(True)
    z2 = logits.clone().requires_grad_(True)
    full = losses.full_loss(z1, enc, class_w)
    plain = losses.class_loss(z2, enc)
    assert torch.allclose(full, plain)  # forward value unchanged (as in the original)
    full.backward()
    plain.backward()
    pixel_w = class_w[enc.argmax()]  # [N,H,W]
    assert torch.allclose(z1.grad, z2.grad * pixel_w[:, None])


def test_gray_images_are_masked_out():
    ab, logits = _batch()
    ab[0] = 2.0  # |ab| <= 5 everywhere: no colour
    mask = losses.colorful_mask(ab)
    assert mask.tolist() == [False, True]
    enc = soft_encode(ab)
    z = logits.clone().requires_grad_(True)
    loss = losses.class_loss(z, enc, mask)
    assert torch.allclose(loss, losses.soft_cross_entropy(logits, enc)[1].mean())
    loss.backward()
    assert z.grad[0].abs().max() == 0 and z.grad[1].abs().max() > 0
    # an all-gray batch: zero loss that still backpropagates
    z = logits.clone().requires_grad_(True)
    zero = losses.class_loss(z, enc, torch.tensor([False, False]))
    zero.backward()
    assert zero.item() == 0.0 and z.grad is not None


def test_l2_loss_hand_case_and_gradcheck():
    pred = torch.zeros(1, 2, 1, 2, dtype=torch.float64)
    target = torch.tensor([3.0, 0.0, 4.0, 2.0], dtype=torch.float64).reshape(1, 2, 1, 2)
    # pixel 0: (3,4) -> 0.5*25 = 12.5; pixel 1: (0,2) -> 0.5*4 = 2; mean 7.25
    assert losses.l2_loss(pred, target).item() == pytest.approx(7.25)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: losses.l2_loss(p, target), (pred,))


def test_nan_inputs_raise_clear_errors():
    ab, logits = _batch()
    enc = soft_encode(ab)
    logits[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        losses.class_loss(logits, enc)
    with pytest.raises(ValueError, match="NaN"):
        losses.l2_loss(torch.full((1, 2, 2, 2), float("inf")), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="unknown loss variant"):
        losses.colorization_loss("hinge", logits, ab)
    with pytest.raises(ValueError, match="do not match"):
        losses.class_loss(torch.zeros(1, 313, 3, 3), enc)


@pytest.mark.parametrize("variant", losses.LOSS_VARIANTS)
def test_tiny_network_overfits_a_batch(variant):
    torch.manual_seed(0)
    lightness = torch.rand(4, 1, 8, 8)
    ab = torch.cat([80 * lightness - 40, 40 - 80 * lightness], 1)  # colour predictable from L
    out_ch = 2 if variant == "l2" else 313
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, out_ch, 1))
    enc = soft_encode(ab)
    class_w = torch.ones(313)
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    first = None
    for _ in range(150):
        loss = losses.colorization_loss(variant, net(lightness), ab, enc, class_w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.6 * first
