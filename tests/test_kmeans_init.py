"""Data-dependent (Krähenbühl et al.) and Gaussian initialisation (pretext.kmeans_init)."""
import numpy as np
import pytest
import torch
from torch import nn

from pretext.encoders import build_encoder
from pretext.methods import build_method
from pretext.encoders.init import gaussian_init_, kmeans_filters, kmeans_init, kmeans_init_


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Encoder inputs [n, 1, size, size] in [-0.5, 0.5] with image-like structure
    (blurred noise plus edges), so patches are not white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 4, size // 4, generator=g)
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    edges = (torch.rand(n, 1, 1, 1, generator=g) * size).long()
    cols = torch.arange(size).view(1, 1, 1, size)
    return (0.7 * x + 0.3 * (cols > edges).float()) - 0.5


def outputs(model: nn.Module, x: torch.Tensor, kinds) -> dict[str, torch.Tensor]:
    """Output of every module of ``kinds`` (cloned inside the hook: in-place ReLUs follow)."""
    got, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, kinds):
            hooks.append(m.register_forward_hook(lambda mod, a, out, name=name: got.__setitem__(name, out.clone())))
    with torch.no_grad():
        model.forward_features(x)
    for h in hooks:
        h.remove()
    return got


def test_kmeans_init_gives_unit_variance_outputs():
    torch.manual_seed(0)
    model = build_encoder("alexnet_cc", width=0.125)
    model.train()
    calib = [smooth_images(24, 64, seed) for seed in (1, 2)]
    report = kmeans_init_(model, calib, seed=0)
    assert model.training  # mode restored
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("head")]
    assert all(report[n].startswith("kmeans") for n in convs)
    assert not any(n.startswith("head") for n in report)  # the colour head is left alone by default
    model.eval()
    data = torch.cat(calib)
    for name, out in {**outputs(model, data, nn.Conv2d), **outputs(model, data, nn.BatchNorm2d)}.items():
        if name.startswith("head"):
            continue
        mean, var = out.mean((0, 2, 3)), out.var((0, 2, 3), unbiased=False)
        assert mean.abs().max() < 1e-3, name
        assert (var - 1).abs().max() < 1e-3, name
    # held-out images from the same distribution: still about unit variance
    for name, out in outputs(model, smooth_images(48, 64, 3), nn.BatchNorm2d).items():
        var = out.var((0, 2, 3), unbiased=False)
        assert 0.3 < var.median() < 3, name


def test_kmeans_filters_find_the_clusters():
    # patches drawn around 3 directions: the 3 filters must point at them (up to sign/scale)
    rng = np.random.default_rng(0)
    centres = np.eye(3, 9) * 5
    patches = np.concatenate([c + rng.normal(0, 0.3, (300, 9)) for c in centres])
    filters = kmeans_filters(torch.from_numpy(patches), 3, seed=0).double().numpy()
    responses = (patches - patches.mean(0)) @ filters.T               # [900, 3]
    winner = responses.argmax(1).reshape(3, 300)
    # each true cluster is claimed by one filter, a different one per cluster
    majority = [np.bincount(w, minlength=3).argmax() for w in winner]
    assert sorted(majority) == [0, 1, 2]
    assert all((w == m).mean() > 0.95 for w, m in zip(winner, majority))


def test_grouped_and_padded_convs_and_other_encoders():
    torch.manual_seed(0)
    model = build_encoder("resnet50_cc", width=0.0625)
    report = kmeans_init_(model, [smooth_images(8, 32, 0)], max_patches=500)
    assert "res2.0.downsample.0" in report and "res5.2.conv3" in report
    out = outputs(model.eval(), smooth_images(8, 32, 0), nn.BatchNorm2d)
    var = torch.stack([o.var((0, 2, 3), unbiased=False).mean() for o in out.values()])
    assert ((var - 1).abs() < 1e-2).all()


def test_gaussian_init():
    model = build_encoder("alexnet_cc", width=0.125)
    gaussian_init_(model, std=0.01, seed=0)
    w = model.conv3[0].weight
    assert abs(w.std().item() - 0.01) < 1e-3 and model.conv3[0].bias.abs().max() == 0
    assert torch.equal(model.conv3[1].running_var, torch.ones_like(model.conv3[1].running_var))
    gaussian_init_(model, std=0.01, batches=[smooth_images(16, 64, 0)], seed=0)
    assert torch.equal(model.conv3[0].weight, w)  # same seed, same filters; BN now from data
    out = outputs(model.eval(), smooth_images(16, 64, 0), nn.BatchNorm2d)
    # unit variance up to BN's eps (1e-5) against small running variances (std 0.01 filters)
    assert all((o.var((0, 2, 3), unbiased=False) - 1).abs().max() < 0.1 for o in out.values())


def test_loader_entry_point_includes_head():
    # the pretext trainer's call: kmeans_init(model, loader, device) on uint8 RGB batches
    g = torch.Generator().manual_seed(0)
    loader = [{"image": torch.randint(0, 256, (8, 3, 48, 48), generator=g, dtype=torch.uint8)} for _ in range(3)]
    loader.insert(1, {"image": torch.empty(0, 3, 0, 0, dtype=torch.uint8)})  # an all-skipped batch
    model = build_method("zhang", build_encoder("alexnet_cc", width=0.125))
    report = kmeans_init(model, loader, "cpu", max_images=20, max_patches=400)
    assert any(n.startswith("head") for n in report) and any(n.startswith("trunk.conv1") for n in report)
    with torch.no_grad():
        assert torch.isfinite(model.logits(torch.rand(2, 1, 48, 48) - 0.5)).all()
    with pytest.raises(ValueError, match="no usable image"):
        kmeans_init(model, [{"image": torch.empty(0, 3, 0, 0, dtype=torch.uint8)}], "cpu")


def test_kmeans_clusters_at_least_100_patches_per_filter():
    """magic_init's "10 x k" is its mini-batch size, not the data: one batch of 10 patches
    per centre would understate the Krähenbühl baseline."""
    torch.manual_seed(0)
    model = build_encoder("alexnet_cc", width=0.125)  # conv1: 12 filters; conv2: 2 groups of 16
    report = kmeans_init_(model, [smooth_images(24, 64, seed) for seed in (1, 2)], seed=0)
    assert report["conv1.0"].startswith("kmeans (1200 patches)")  # 100 x 12
    assert report["conv2.0"].startswith("kmeans (1600 patches)")  # 100 x 16 per group, shared rows
    capped = kmeans_init_(build_encoder("alexnet_cc", width=0.125), [smooth_images(8, 64, 1)], max_patches=300)
    assert capped["conv1.0"].startswith("kmeans (300 patches)")
