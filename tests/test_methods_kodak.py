"""Every registered method colorizes real photos at their native size (Kodak24 768 x 512 and
512 x 768 from ../shared): the output has the photo's size and keeps its lightness. Untrained
tiny networks (the colours are not judged here; the methods suite judges them)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pretext.color.lab import rgb_to_lab
from pretext.colorize import colorize_image, load_colorizer
from pretext.encoders import build_encoder
from pretext.engine.checkpoint import save_checkpoint
from pretext.methods import list_methods, method_payload
from tests.conftest import shared_path

WIDTH = 0.0625  # the narrowest trunks: seconds per photo


def _method_on_any_trunk(name: str):
    """The method on the first encoder it accepts (Liang et al.'s patch model needs liang_cc)."""
    from pretext.methods import build_method

    errors = []
    for encoder in ("alexnet_cc", "liang_cc"):
        try:
            return build_method(name, build_encoder(encoder, width=WIDTH)), encoder
        except ValueError as exc:
            errors.append(str(exc))
    raise AssertionError(f"{name} accepts neither alexnet_cc nor liang_cc: {errors}")


@pytest.mark.parametrize("method_name", list_methods())
def test_kodak_photos_at_native_size_keep_their_lightness(method_name, tmp_path, one_thread):
    kodak = shared_path("data", "kodak24")
    torch.manual_seed(0)
    method, encoder = _method_on_any_trunk(method_name)
    save_checkpoint(tmp_path / "c.pt", method_payload(method, encoder, {"width": WIDTH}, {}))
    colorizer = load_colorizer(tmp_path / "c.pt", size=64)
    for name in ("kodim01.png", "kodim04.png"):  # landscape, portrait
        photo = torch.from_numpy(np.array(Image.open(kodak / name).convert("RGB"))).permute(2, 0, 1)
        rgb = colorize_image(colorizer, photo).rgb  # float [3,H,W] in [0,1]
        assert rgb.shape == photo.shape
        lightness = [rgb_to_lab(x[None])[0, 0] for x in (rgb, photo.float() / 255)]
        # the photo's L, up to the gamut clipping of strong (untrained) colours
        assert (lightness[0] - lightness[1]).abs().median() < 1.0
