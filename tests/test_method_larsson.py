"""Larsson et al. 2016 (``larsson``): hypercolumn shapes, sparse = dense at the sampled pixels,
hand-computed losses (hue/chroma and Lab), decoding of hand-made histograms, a training
step, the checkpoint round trip and the tiny recipe end to end."""
import json
import math

import pytest
import torch

from benchmarks.cli import main as cli
from pretext.encoders import build_encoder
from pretext.engine.checkpoint import save_checkpoint
from pretext.methods import StepContext, build_method, load_method, method_payload
from pretext.methods.hypercolumn import dense_features, gather_pixels, pixel_grid, sample_features
from pretext.methods.larsson import decode_hc, decode_lab, hc_bins, hue_chroma
from tests.conftest import REPO
from tests.helpers import tiny_imagefolder


def _larsson(**kw):
    torch.manual_seed(0)
    return build_method("larsson", build_encoder("alexnet_cc", width=0.125), **kw)


def _batch(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            "label": torch.zeros(n, dtype=torch.long)}


def test_shapes(one_thread):
    m = _larsson().eval()
    # hypercolumn = L (1) + alexnet_cc taps at width 1/8: 12 + 32 + 48 + 48 + 32 -> 1024/8 hidden -> 2 x 32 bins
    assert m.head.mlp[0].in_channels == 1 + 12 + 32 + 48 + 48 + 32 == 173
    assert m.head.mlp[0].out_channels == 128 and m.head.out.out_channels == 64
    x = torch.rand(2, 1, 72, 80) - 0.5
    assert m.sparse(x, torch.randint(0, 72 * 80, (2, 128))).shape == (2, 64, 1, 128)
    assert m.output_size(72, 80) == (18, 20)  # output_stride 4
    assert m.dense(x).shape == (2, 64, 18, 20)
    for decoder in m.decoders:
        assert m.predict_ab(x, decoder).shape == (2, 2, 18, 20)
    assert _larsson(space="lab").head.out.out_channels == 313
    assert _larsson(taps=["conv1", "conv5"]).head.mlp[0].in_channels == 1 + 12 + 32


def test_sparse_hypercolumns_equal_dense_ones_at_the_sampled_pixels(one_thread):
    m = _larsson(output_stride=1).eval()
    x = torch.rand(2, 1, 61, 70) - 0.5
    index = torch.tensor([[0, 69, 70 * 60, 61 * 70 - 1, 1234], [5, 333, 2000, 4269, 77]])  # corners + inside
    with torch.no_grad():
        maps = m.maps(x)
        sparse = sample_features(maps, pixel_grid(index, 61, 70))  # [2,C,1,5]
        dense = dense_features(maps, (61, 70))  # [2,C,61,70]
        assert torch.allclose(sparse, gather_pixels(dense, index), atol=1e-5)
        assert torch.allclose(sparse[:, :1], gather_pixels(x, index), atol=1e-6)  # L at a pixel centre: the pixel
        assert torch.allclose(m.sparse(x, index), gather_pixels(m.dense(x), index), atol=1e-4)


def test_hue_chroma_bins():
    ab = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -10.0], [30.0, 40.0], [130.0, -1e-4]])
    ab = ab.T[None, :, :, None]  # [1,2,6,1]
    hue, chroma = hue_chroma(ab)
    assert torch.allclose(hue[0, :4, 0], torch.tensor([0.0, 0.25, 0.5, 0.75]))
    assert torch.allclose(chroma[0, :, 0], torch.tensor([10.0, 10.0, 10.0, 10.0, 50.0, 130.0]))
    hue_bin, chroma_bin = hc_bins(ab, 32, 128.0)
    assert hue_bin[0, :, 0].tolist() == [0, 8, 16, 24, 4, 31]  # atan2(40, 30) = 53.1 deg -> 4.72; 359.99 deg -> 31
    assert chroma_bin[0, :, 0].tolist() == [2, 2, 2, 2, 12, 31]  # 4 ab units a bin; beyond 128 clamps


def test_hue_chroma_loss_by_hand():
    m = _larsson()
    out = torch.zeros(2, 64, 1, 2)  # uniform histograms: CE = log 32 per term
    out[0, 16, 0, 0] = math.log(31.0)  # pixel 0: p(chroma bin 16) = 31 / (31 + 31) = 1/2
    target = torch.tensor([[64.0, 0.0], [0.0, 0.0]]).T[None, :, None].repeat(2, 1, 1, 1)  # [2,2,1,2]
    mask = torch.tensor([True, False])  # the second image has no colour: out of the loss
    # pixel 0: chroma 64 (bin 16, y_C = 1/2), hue 0: log 2 + 5 * 1/2 * log 32; pixel 1: chroma 0: log 32
    expected = (math.log(2) + 2.5 * math.log(32) + math.log(32)) / 2
    assert m.loss(out, target, mask).item() == pytest.approx(expected, rel=1e-6)
    assert _larsson(hue_weight=0.0).loss(out, target, mask).item() == pytest.approx((math.log(2) + math.log(32)) / 2)


def test_lab_loss_by_hand():
    target = torch.tensor([[20.0, -30.0], [3.0, 4.0]]).T[None, :, None]  # [1,2,1,2]: a bin centre, off-centre
    hard = _larsson(space="lab")
    assert hard.loss(torch.zeros(1, 313, 1, 2), target, torch.tensor([True])).item() == pytest.approx(math.log(313))
    out = torch.zeros(1, 313, 1, 2)
    from pretext.color.bins import ab_centers
    bin_20_m30 = int(((ab_centers() - torch.tensor([20.0, -30.0])).norm(dim=1)).argmin())
    out[0, bin_20_m30] = math.log(312.0)  # p = 312 / (312 + 312) = 1/2 at that bin
    # hard target: pixel 0 hits its bin (CE log 2), pixel 1's nearest bin (0, 0) has p = 1/624
    assert hard.loss(out, target, torch.tensor([True])).item() == pytest.approx((math.log(2) + math.log(624)) / 2, rel=1e-5)
    soft = _larsson(space="lab", lab_target="soft")  # K = 5 Gaussian neighbours: more than the hard CE at a centre
    assert soft.loss(out[..., :1], target[..., :1], torch.tensor([True])).item() > math.log(2)


def _logits(probs: dict, k: int = 32) -> torch.Tensor:
    p = torch.zeros(1, k, 1, 1)
    for i, v in probs.items():
        p[0, i] = v
    return p.clamp_min(1e-30).log()


def test_decoding_hand_made_histograms():
    chroma = _logits({1: 0.2, 3: 0.6, 6: 0.2})  # bin centres 6, 14, 26
    hue = _logits({0: 0.5, 31: 0.5})  # 5.625 and 354.375 degrees: the circular mean is 0, a linear one 180
    mean = decode_hc(chroma, hue, "mean", 128.0)[0, :, 0, 0]
    assert torch.allclose(mean, torch.tensor([0.2 * 6 + 0.6 * 14 + 0.2 * 26, 0.0]), atol=1e-4)  # (14.8, 0)
    # median: the cumulative sum is 0.2 up to bin 3 and 0.8 after it: 1/2 at the middle of bin 3 = 14
    assert torch.allclose(decode_hc(chroma, hue, "median", 128.0)[0, :, 0, 0], torch.tensor([14.0, 0.0]), atol=1e-4)
    mode = decode_hc(chroma, _logits({8: 0.7, 20: 0.3}), "mode", 128.0)[0, :, 0, 0]  # bin 8: 8.5/32 of the circle
    angle = 2 * math.pi * 8.5 / 32
    assert torch.allclose(mode, torch.tensor([14 * math.cos(angle), 14 * math.sin(angle)]), atol=1e-4)
    # chromatic fading: a flat hue histogram has |z| = 0, so the decoded colour is gray
    flat = decode_hc(chroma, torch.zeros(1, 32, 1, 1), "mean", 128.0)
    assert flat.abs().max() < 1e-4
    # annealing sharpens toward the mode: the chroma moves from 14.8 toward 14
    annealed = decode_hc(chroma, hue, "annealed", 128.0)[0, 0, 0, 0]
    assert 14.0 < annealed < 14.8


def test_lab_decoding_hand_made_histogram():
    from pretext.color.bins import ab_centers
    centres = ab_centers()
    i = int(((centres - torch.tensor([20.0, -30.0])).norm(dim=1)).argmin())
    j = int(((centres - torch.tensor([40.0, -30.0])).norm(dim=1)).argmin())
    logits = torch.full((1, 313, 1, 1), -1e4)
    logits[0, i], logits[0, j] = math.log(0.75), math.log(0.25)
    assert torch.allclose(decode_lab(logits, "mean")[0, :, 0, 0], torch.tensor([25.0, -30.0]), atol=1e-3)
    assert torch.allclose(decode_lab(logits, "mode")[0, :, 0, 0], torch.tensor([20.0, -30.0]))
    # a marginal: 0.75 in [15, 25), 0.25 in [35, 45) -> median 15 + 10 * 0.5 / 0.75; b: all in [-35, -25) -> -30
    assert torch.allclose(decode_lab(logits, "median")[0, :, 0, 0], torch.tensor([15 + 10 / 1.5, -30.0]), atol=1e-3)


def test_training_steps_lower_the_loss(one_thread):
    m = _larsson()
    ctx = StepContext(torch.device("cpu"))
    opts = {"main": torch.optim.Adam(m.optimizer_groups()["main"], lr=1e-3)}
    batch = _batch()
    m.train()
    torch.manual_seed(1)
    losses = [m.training_step([batch], m, opts, ctx)["loss"] for _ in range(8)]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    assert not [k for k, p in m.named_parameters() if p.grad is None]  # every tap and the head took part
    gray = {"image": _batch()["image"][:, :1].repeat(1, 3, 1, 1), "label": torch.zeros(2, dtype=torch.long)}
    loss, stats = m(gray, ctx)
    assert stats["colourful"] == 0 and loss.item() == 0.0  # gray images are left out of the loss
    out = m.eval().validation_step(_batch(size=72), ctx)
    assert out.count == 2 and out.pred_ab.shape == out.true_ab.shape == (2, 2, 72, 72)


def test_checkpoint_round_trip(tmp_path, one_thread):
    m = _larsson(space="lab", lab_target="soft", samples=64).eval()
    path = tmp_path / "l.pt"
    kwargs = {"space": "lab", "lab_target": "soft", "samples": 64}
    save_checkpoint(path, method_payload(m, "alexnet_cc", {"width": 0.125}, kwargs, step=5))
    loaded, payload = load_method(path)
    assert payload["method"] == "larsson" and loaded.space == "lab" and loaded.samples == 64
    assert loaded.record_name == "larsson-lab"
    x = torch.rand(1, 1, 64, 64) - 0.5
    assert torch.equal(loaded.predict_ab(x, "median"), m.predict_ab(x, "median"))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="space must be one of"):
        _larsson(space="rgb")
    with pytest.raises(ValueError, match="lab_target must be one of"):
        _larsson(lab_target="smooth")
    with pytest.raises(ValueError, match=r"unknown or no taps \['fc7'\]"):
        _larsson(taps=["conv1", "fc7"])
    m = _larsson().eval()
    with pytest.raises(ValueError, match="decoder must be one of"):
        m.predict_ab(torch.zeros(1, 1, 64, 64), "sample")
    with pytest.raises(ValueError, match="unknown colorize options"):
        m.predict_ab(torch.zeros(1, 1, 64, 64), "mean", global_from=1)


@pytest.mark.slow
def test_tiny_recipe_end_to_end(tmp_path):
    data = tiny_imagefolder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    sets = ["iterations=3", "batch_size=4", "data.num_workers=0", "val_every=1000", "val_images=4",
            "data.val_limit=6", f"data.root={data}"]
    assert cli(["pretrain", "--config", str(REPO / "configs/pretext/larsson_tiny.yaml"), "--run-dir", str(run),
                *[a for s in sets for a in ("--set", s)]]) == 0
    records = {r["metric"]: r for r in json.loads((run / "metrics.json").read_text())["records"]}
    assert records["val_auc"]["method"] == "larsson-hc" and 0 < records["val_auc"]["value"] <= 100
    out = tmp_path / "colorized"
    assert cli(["colorize", str(data / "val" / "red_disc"), "--checkpoint", str(run / "checkpoints" / "last.pt"),
                "--out", str(out), "--size", "0", "--decoder", "mean"]) == 0
    assert len(list(out.glob("*.png"))) == 2
