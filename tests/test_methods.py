"""The Method contract (DESIGN §2): every registered method is looped over on every
registered encoder (tiny widths, CPU seconds), plus Zhang's heads counted by hand and
the colorbench 0.1 checkpoint upgrade."""
import pytest
import torch

from pretext.encoders import build_encoder, list_encoders
from pretext.engine.checkpoint import V1_FORMAT, CheckpointError, load_checkpoint, save_checkpoint, trunk_checkpoint
from tests.conftest import build_or_skip
from pretext.methods import StepContext, build_method, list_methods, load_method, method_payload, register_method

CASES = [(m, e) for m in list_methods() for e in list_encoders()]


def _images(n=2, size=64, seed=0):
    """A batch as the loader gives it: uint8 RGB images and labels."""
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            "label": torch.arange(n) % 2}


@pytest.fixture(params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def method(request, one_thread):
    torch.manual_seed(0)
    name, encoder = request.param
    return build_or_skip(name, build_encoder(encoder, width=0.125))


def test_training_step_updates_every_parameter(method):
    ctx = StepContext(torch.device("cpu"))
    groups = method.optimizer_groups()
    assert "main" in groups
    opts = {k: torch.optim.SGD(v, lr=0.1) for k, v in groups.items()}
    before = {k: v.detach().clone() for k, v in method.named_parameters()}
    method.train()
    stats = method.training_step([_images(seed=1), _images(seed=2)], method, opts, ctx)
    assert torch.isfinite(torch.tensor(stats["loss"]))
    # every parameter took part in the step (timm's zero-init last BN of each ResNet block
    # makes some first-step gradients exactly 0, so "changed" is checked on a sample)
    assert not [k for k, p in method.named_parameters() if p.grad is None]
    changed = {k for k, v in method.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("trunk.conv1") for k in changed) and any(k.startswith("head") for k in changed)


def test_predict_ab_and_validation_shapes(method):
    method.eval()
    ctx = StepContext(torch.device("cpu"))
    x = torch.rand(2, 1, 72, 80) - 0.5
    ab = method.predict_ab(x)
    assert ab.shape == (2, 2, *method.output_size(72, 80))
    out = method.validation_step(_images(size=72), ctx)
    assert out.count == 2 and out.pred_ab.shape == out.true_ab.shape == (2, 2, 72, 72)
    assert set(out.sums) >= {"val_loss"}


def test_checkpoint_round_trip_is_strict(method, tmp_path):
    encoder = method.trunk.encoder_name
    path = tmp_path / "m.pt"
    save_checkpoint(path, method_payload(method, encoder, {"width": 0.125}, {}, step=3))
    loaded, payload = load_method(path)
    assert payload["step"] == 3 and type(loaded) is type(method)
    for k, v in method.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    bad = dict(payload, method_state={**payload["method_state"], "extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_method(bad)


def test_trunk_only_checkpoint_cannot_colorize(tmp_path):
    path = tmp_path / "t.pt"
    save_checkpoint(path, trunk_checkpoint(build_encoder("alexnet_cc", width=0.125), "alexnet_cc", {"width": 0.125}))
    with pytest.raises(CheckpointError, match="trunk only"):
        load_method(path)


def test_registry_errors():
    trunk = build_encoder("alexnet_cc", width=0.125)
    with pytest.raises(ValueError, match=r"unknown method 'nope'.*zhang"):
        build_method("nope", trunk)
    with pytest.raises(ValueError, match="already registered"):
        register_method("zhang")
    with pytest.raises(ValueError, match=r"valid method_kwargs: \['loss'"):
        build_method("zhang", trunk, lossy="full")
    with pytest.raises(ValueError, match="loss must be one of"):
        build_method("zhang", trunk, loss="hinge")


def _head_params(encoder, **kw):
    with torch.device("meta"):
        m = build_method("zhang", build_encoder(encoder), **kw)
    return sum(p.numel() for k, p in m.named_parameters() if k.startswith("head."))


def test_zhang_head_parameter_counts():
    # alexnet_cc "released": fc6 6x6 256->4096 with bias (37,748,736 + 4,096), BN without affine (0),
    #   fc7 1x1 4096->4096 with bias (16,781,312), BN (0), fc8 1x1 4096->313 with bias (1,282,361)
    assert _head_params("alexnet_cc") == 37_752_832 + 16_781_312 + 1_282_361 == 55_816_505
    # alexnet_cc "fc" (the CPU recipe): 3x3 256->4096 (9,437,184) + BN 8,192 + 1x1 4096->4096
    #   (16,777,216) + BN 8,192 + 1x1 4096->313 with bias (1,282,361) = 27,513,145
    assert _head_params("alexnet_cc", head="fc") == 9_437_184 + 8_192 + 16_777_216 + 8_192 + 1_282_361 == 27_513_145
    assert _head_params("vgg_cc") == 256 * 313 + 313 == 80_441  # the ECCV16 model8 output conv
    assert _head_params("resnet50_cc") == 2048 * 313 + 313 == 641_337
    assert _head_params("vgg_cc", loss="l2") == 256 * 2 + 2  # regression: 2 outputs


def test_v1_checkpoint_is_upgraded(tmp_path, one_thread):
    """colorbench 0.1 wrote trunk + head in one ``model`` dict; it still loads, same logits."""
    torch.manual_seed(0)
    m = build_method("zhang", build_encoder("alexnet_cc", width=0.125))
    prior = torch.rand(313)
    prior /= prior.sum()
    m.set_prior(prior)
    model = {**m.trunk.state_dict(), **{k: v for k, v in m.method_state().items() if k.startswith("head.")}}
    path = tmp_path / "v1.pt"
    torch.save({"format": V1_FORMAT, "model": model, "encoder": "alexnet_cc",
                "encoder_kwargs": {"width": 0.125, "num_bins": 313}, "loss": "full", "prior": prior, "step": 7}, path)
    loaded, payload = load_method(path)
    assert payload["upgraded_from"] == V1_FORMAT and payload["encoder_kwargs"] == {"width": 0.125}
    assert torch.allclose(loaded.class_weights, m.class_weights)
    x = torch.rand(1, 1, 64, 64) - 0.5
    m.eval()
    assert torch.equal(loaded.logits(x), m.logits(x))


def test_garbage_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a colorbench checkpoint") as err:
        load_checkpoint(path)
    assert "weights_only=False" not in str(err.value)  # never advise unsafe loading
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="--init timm:ARCH"):
        load_checkpoint(path)


def test_released_alexnet_head_puts_the_loss_at_stride_8(one_thread):
    m = build_method("zhang", build_encoder("alexnet_cc", width=0.125)).eval()
    assert m.trunk.feature_size(227, 227) == (13, 13)  # conv5 at stride 16
    assert m.output_size(227, 227) == (26, 26)  # logits upsampled x2: stride 8
    assert m.logits(torch.zeros(1, 1, 227, 227)).shape == (1, 313, 26, 26)
    fc = build_method("zhang", build_encoder("alexnet_cc", width=0.125), head="fc")
    assert fc.output_size(227, 227) == (13, 13)


def test_targets_are_point_sampled_by_default():
    """A 2x2 checkerboard of saturated colours at stride 2: point sampling keeps one pixel's
    chroma per cell, area averaging mixes them toward grey."""
    from pretext.color.targets import resample_ab
    ab = torch.zeros(1, 2, 4, 4)
    ab[0, 0, ::2, ::2], ab[0, 0, 1::2, 1::2] = 60.0, 60.0
    ab[0, 0, ::2, 1::2], ab[0, 0, 1::2, ::2] = -60.0, -60.0
    point = resample_ab(ab, (2, 2), "point")
    assert torch.equal(point[0, 0], torch.full((2, 2), 60.0))  # pixels (0,0), (0,2), (2,0), (2,2)
    assert torch.equal(resample_ab(ab, (2, 2), "area")[0, 0], torch.zeros(2, 2))
    m = build_method("zhang", build_encoder("vgg_cc", width=0.125))
    assert m.target_sampling == "point"
