"""Dahl 2016 (``dahl``): ab regression on hypercolumns — shapes, the L2 loss by hand, sparse
= dense at the sampled pixels, a training step, the checkpoint round trip and the tiny
recipe end to end."""
import json
import math

import pytest
import torch

from benchmarks.cli import main as cli
from pretext.encoders import build_encoder
from pretext.engine.checkpoint import save_checkpoint
from pretext.methods import StepContext, build_method, load_method, method_payload
from pretext.methods.hypercolumn import gather_pixels
from tests.conftest import REPO
from tests.helpers import tiny_imagefolder


def _dahl(encoder="alexnet_cc", **kw):
    torch.manual_seed(0)
    return build_method("dahl", build_encoder(encoder, width=0.125), **kw)


def _batch(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            "label": torch.zeros(n, dtype=torch.long)}


def test_shapes(one_thread):
    m = _dahl("vgg_cc").eval()
    # hypercolumn = L (1) + vgg_cc taps at width 1/8: 8 + 16 + 32 + 64 + 64 + 64 + 64 + 32 -> 128 hidden -> ab
    assert m.head.mlp[0].in_channels == 1 + 8 + 16 + 32 + 64 * 4 + 32 == 345
    assert m.head.out.out_channels == 2 and m.decoders == () and m.record_name == "dahl"
    x = torch.rand(2, 1, 72, 80) - 0.5
    assert m.sparse(x, torch.randint(0, 72 * 80, (2, 128))).shape == (2, 2, 1, 128)
    assert m.predict_ab(x).shape == (2, 2, 18, 20) == (2, 2, *m.output_size(72, 80))
    assert _dahl(output_stride=8).output_size(72, 80) == (9, 10)
    assert torch.equal(m.predict_ab(x, "annealed"), m.predict_ab(x, "mean"))  # nothing to decode: one output


def test_l2_loss_by_hand():
    m = _dahl()
    out = torch.zeros(2, 2, 1, 2)
    out[0, :, 0, 0] = torch.tensor([0.3, -0.4])  # x ab_scale 100 -> ab (30, -40)
    target = torch.zeros(2, 2, 1, 2)
    target[0, :, 0, 1] = torch.tensor([6.0, 8.0])
    # image 0: pixel 0 off by (30, -40): 1/2 * 2500; pixel 1 off by (6, 8): 1/2 * 100; image 1 is gray: masked out
    expected = (0.5 * 2500 + 0.5 * 100) / 2
    assert m.loss(out, target, torch.tensor([True, False])).item() == pytest.approx(expected)
    assert m.loss(out, target, torch.tensor([False, False])).item() == 0.0


def test_sparse_outputs_equal_dense_ones_at_the_sampled_pixels(one_thread):
    m = _dahl("resnet50_cc", output_stride=1).eval()
    x = torch.rand(1, 1, 50, 66) - 0.5
    index = torch.tensor([[0, 65, 49 * 66, 50 * 66 - 1, 1000, 2345]])
    with torch.no_grad():
        assert torch.allclose(m.sparse(x, index), gather_pixels(m.dense(x), index), atol=1e-4)


def test_training_steps_lower_the_loss(one_thread):
    m = _dahl()
    ctx = StepContext(torch.device("cpu"))
    opts = {"main": torch.optim.Adam(m.optimizer_groups()["main"], lr=1e-3)}
    batch = _batch()
    m.train()
    torch.manual_seed(1)
    losses = [m.training_step([batch], m, opts, ctx)["loss"] for _ in range(8)]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    assert not [k for k, p in m.named_parameters() if p.grad is None]
    out = m.eval().validation_step(_batch(size=72), ctx)
    assert out.count == 2 and out.pred_ab.shape == out.true_ab.shape == (2, 2, 72, 72)
    assert out.sums["val_loss"] > 0


def test_checkpoint_round_trip(tmp_path, one_thread):
    m = _dahl(taps=["conv2", "conv5"], samples=32).eval()
    path = tmp_path / "d.pt"
    save_checkpoint(path, method_payload(m, "alexnet_cc", {"width": 0.125}, {"taps": ["conv2", "conv5"], "samples": 32}))
    loaded, payload = load_method(path)
    assert payload["method"] == "dahl" and loaded.taps == ["conv2", "conv5"] and loaded.samples == 32
    x = torch.rand(1, 1, 64, 64) - 0.5
    assert torch.equal(loaded.predict_ab(x), m.predict_ab(x))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="ab_scale must be > 0"):
        _dahl(ab_scale=0)
    with pytest.raises(ValueError, match="samples and output_stride must be >= 1"):
        _dahl(samples=0)
    with pytest.raises(ValueError, match="valid method_kwargs"):
        _dahl(space="hc")  # a larsson kwarg
    with pytest.raises(ValueError, match="unknown colorize options"):
        _dahl().predict_ab(torch.zeros(1, 1, 64, 64), global_from=1)


@pytest.mark.slow
def test_tiny_recipe_end_to_end(tmp_path):
    data = tiny_imagefolder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    sets = ["iterations=3", "batch_size=4", "data.num_workers=0", "val_every=1000", "val_images=4",
            "data.val_limit=6", f"data.root={data}"]
    assert cli(["pretrain", "--config", str(REPO / "configs/pretext/dahl_tiny.yaml"), "--run-dir", str(run),
                *[a for s in sets for a in ("--set", s)]]) == 0
    records = {r["metric"]: r for r in json.loads((run / "metrics.json").read_text())["records"]}
    assert records["val_loss"]["method"] == "dahl" and records["val_loss"]["value"] > 0
    out = tmp_path / "colorized"
    assert cli(["colorize", str(data / "val" / "blue_square"), "--checkpoint", str(run / "checkpoints" / "last.pt"),
                "--out", str(out), "--size", "0"]) == 0
    assert len(list(out.glob("*.png"))) == 2
