"""Image sources: decoding of every PIL mode, counted skips, the four layouts, the
paper's transforms and loader determinism. Small images written into tmp_path."""
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data.distributed import DistributedSampler

from pretext.data.images import REASONS, BadImage, BadSample, load_rgb

from pretext.data.loader import SkipCounter, collate_skip_bad, make_loader, train_transform, val_transform

from pretext.data.sources import ImageSource, build_source
from tests.conftest import shared_path


def px(img, x, y):
    return tuple(int(v) for v in np.asarray(img)[y, x])


def save(arr, path, mode=None, **kw):
    Image.fromarray(arr, mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return path


def rgb_image(path, w=40, h=30, seed=0, **kw):
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return save(a, path, **kw)


def png48(path, rgb16):
    """A 16-bit-per-channel RGB PNG, written by hand (PIL cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------- modes

def test_rgb_png_exact_and_jpeg_close(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_rgb(save(a, tmp_path / "a.png"))), a)
    flat = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    im = load_rgb(save(flat, tmp_path / "a.jpg", quality=100, subsampling=0))
    assert im.mode == "RGB" and np.abs(np.asarray(im).astype(int) - flat).max() <= 2


def test_cmyk_jpeg_uses_pils_naive_conversion(tmp_path):
    # PIL: R = (255 - C)(255 - K) / 255, same for G (M) and B (Y); no ICC profile.
    c = np.zeros((16, 16, 4), np.uint8)
    c[:8, :, 0] = 255                  # pure cyan
    c[8:, :, 2], c[8:, :, 3] = 255, 128  # yellow ink, half black
    im = load_rgb(save(c, tmp_path / "c.jpg", "CMYK", quality=100))
    assert px(im, 0, 0) == (0, 255, 255)
    assert px(im, 12, 12) == (127, 127, 0)


def test_rgba_composited_on_white(tmp_path):
    a = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], np.uint8)
    im = load_rgb(save(a, tmp_path / "a.png", "RGBA"))
    assert px(im, 0, 0) == (10, 20, 30)       # opaque: exact
    assert px(im, 1, 0) == (255, 255, 255)    # transparent: white, not the hidden colour
    assert px(im, 2, 0) == (127, 127, 127)    # black over white at 128/255


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (3, 1))
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    p.putdata([0, 1, 2])
    p.save(tmp_path / "p.png", transparency=2)
    im = load_rgb(tmp_path / "p.png")
    assert [px(im, x, 0) for x in range(3)] == [(255, 0, 0), (0, 255, 0), (255, 255, 255)]


def test_gray_la_and_one_bit(tmp_path):
    im = load_rgb(save(np.array([[0, 77, 255]], np.uint8), tmp_path / "l.png", "L"))
    assert [px(im, x, 0) for x in range(3)] == [(0, 0, 0), (77, 77, 77), (255, 255, 255)]
    la = np.array([[[100, 0], [100, 255], [100, 128]]], np.uint8)
    im = load_rgb(save(la, tmp_path / "la.png", "LA"))
    assert [px(im, x, 0) for x in range(3)] == [(255, 255, 255), (100, 100, 100), (177, 177, 177)]
    b = Image.new("1", (2, 1))
    b.putpixel((1, 0), 1)
    b.save(tmp_path / "b.png")
    im = load_rgb(tmp_path / "b.png")
    assert (px(im, 0, 0), px(im, 1, 0)) == ((0, 0, 0), (255, 255, 255))


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    v = np.array([[0, 257, 32896, 65535]], np.uint16)
    want = [0, 1, 128, 255]
    im16 = Image.fromarray(v)
    im16.save(tmp_path / "g16.png")                                         # I;16
    Image.frombytes("I;16B", (4, 1), v.astype(">u2").tobytes()).save(tmp_path / "g16b.tif")
    Image.fromarray(v.astype(np.int32)).save(tmp_path / "gi.tif")          # I (32-bit)
    for name, mode in [("g16.png", "I;16"), ("g16b.tif", "I;16B"), ("gi.tif", "I")]:
        assert Image.open(tmp_path / name).mode == mode
        im = load_rgb(tmp_path / name)
        assert [px(im, x, 0)[0] for x in range(4)] == want, name
        assert px(im, 3, 0) == (255, 255, 255)


def test_48bit_rgb_png(tmp_path):
    # PIL reads 16-bit RGB as 8-bit RGB keeping the high byte (within 1 of v / 257).
    a = np.array([[[65535, 32896, 0]]], np.uint16)
    assert px(load_rgb(png48(tmp_path / "c48.png", a)), 0, 0) == (255, 128, 0)


def test_float_image_refused(tmp_path):
    Image.fromarray(np.ones((2, 2), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(BadImage) as e:
        load_rgb(tmp_path / "f.tif")
    assert e.value.reason == "unsupported"


def test_gray_file_flag_and_skip_option(tmp_path):
    save(np.zeros((8, 8), np.uint8), tmp_path / "g.png", "L")
    rgb_image(tmp_path / "c.png", 8, 8)
    src = build_source("folder", tmp_path)
    assert [src[i]["gray_file"] for i in range(2)] == [False, True]  # c.png, g.png
    bad = build_source("folder", tmp_path, skip_gray_files=True)[1]
    assert isinstance(bad, BadSample) and bad.reason == "grayscale_excluded"


# ----------------------------------------------------------------------------- bad files

def bad_tree(root):
    """3 good images, then a truncated JPEG, a zero-byte file, a garbage file."""
    root.mkdir()
    for i in range(3):
        rgb_image(root / f"good{i}.png", 24, 24, seed=i)
    good = rgb_image(root / "x.jpg", 200, 150, quality=95).read_bytes()
    (root / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (root / "x.jpg").unlink()
    (root / "zero.jpg").write_bytes(b"")
    (root / "junk.png").write_bytes(b"this is not an image " * 20)
    return root


@pytest.mark.parametrize("name,reason", [("trunc.jpg", "truncated"), ("zero.jpg", "empty"),
                                         ("junk.png", "corrupt"), ("gone.jpg", "missing")])
def test_load_rgb_reasons(tmp_path, name, reason):
    root = bad_tree(tmp_path / "d")
    with pytest.raises(BadImage) as e:
        load_rgb(root / name)
    assert e.value.reason == reason and str(root / name) in str(e.value)


def test_truncation_detected_even_if_globally_allowed(tmp_path, monkeypatch):
    root = bad_tree(tmp_path / "d")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(BadImage, match="truncated"):
        load_rgb(root / "trunc.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_skipped_and_counted(tmp_path, workers):
    src = build_source("folder", bad_tree(tmp_path / "d"), transform=val_transform(16))
    counter, seen = SkipCounter(), []
    for batch in make_loader(src, batch_size=4, num_workers=workers):
        counter.update(batch)
        seen += batch["path"]
        if len(batch["index"]):  # a batch of only bad files is empty
            assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 16, 16)
    assert sorted(p.rsplit("/", 1)[1] for p in seen) == ["good0.png", "good1.png", "good2.png"]
    d = counter.as_dict()
    assert (d["skipped/truncated"], d["skipped/empty"], d["skipped/corrupt"]) == (1, 1, 1)
    assert d["skipped/total"] == 3 and set(d) == {f"skipped/{r}" for r in REASONS} | {"skipped/total"}
    assert str(counter) == "skipped 3 (truncated 1, corrupt 1, empty 1)"


def test_collate_edge_cases():
    bad = BadSample(0, "a.jpg", "corrupt")
    empty = collate_skip_bad([bad])
    assert empty["image"].shape == (0, 3, 0, 0) and empty["label"].shape == (0,)
    assert empty["skipped"] == [bad]
    items = [{"image": torch.zeros(3, h, 5, dtype=torch.uint8), "label": 1, "index": i,
              "path": "p", "gray_file": False} for i, h in enumerate((4, 6))]
    mixed = collate_skip_bad(items)
    assert isinstance(mixed["image"], list) and mixed["index"].tolist() == [0, 1]


def test_skip_counter_api():
    c = SkipCounter()
    c.add("grayscale_excluded", 4)  # the trainer's on-device non-gray rule
    c.update([BadSample(0, "x", "empty")])
    assert c.total == 5 and c.all_reduce()["skipped/grayscale_excluded"] == 4
    with pytest.raises(ValueError, match="unknown skip reason"):
        c.add("bogus")


# ----------------------------------------------------------------------------- layouts

def test_imagefolder(tmp_path):
    for cls, n in [("cat", 2), ("dog", 3)]:
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(n):
            rgb_image(tmp_path / "train" / cls / f"{i}.JPEG", seed=i)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    src = build_source("imagefolder", tmp_path, split="train")
    assert src.classes == ["cat", "dog"] and src.labels.tolist() == [0, 0, 1, 1, 1]
    assert src[4]["label"] == 1 and src[4]["image"].shape == (3, 30, 40)


def test_folder_recursive(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    rgb_image(tmp_path / "z.png")
    rgb_image(tmp_path / "a" / "b" / "y.jpg")
    (tmp_path / "a" / "._y.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (tmp_path / "a" / "readme.md").write_text("x")
    src = build_source("folder", tmp_path)
    assert [src.path(i).rsplit("/", 1)[1] for i in range(len(src))] == ["y.jpg", "z.png"]
    assert src[0]["label"] == -1 and build_source("folder", tmp_path, limit=1).__len__() == 1


def test_filelist(tmp_path):
    (tmp_path / "img").mkdir()
    rgb_image(tmp_path / "img" / "a.jpg")
    rgb_image(tmp_path / "img" / "b c.png")
    absolute = rgb_image(tmp_path / "abs.png")
    (tmp_path / "val.txt").write_text(f"# comment\nimg/a.jpg 7\n\nimg/b c.png\n{absolute} 2\n")
    src = build_source("filelist", tmp_path, split="val")
    assert src.labels.tolist() == [7, -1, 2]
    assert src.path(1) == str(tmp_path / "img" / "b c.png") and src.path(2) == str(absolute)
    assert len(build_source("filelist", tmp_path, list_file=tmp_path / "val.txt")) == 3


def voc_tree(root, ids=("000001", "000002"), split="trainval"):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for i in ids:
        rgb_image(root / "JPEGImages" / f"{i}.jpg")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_voc(tmp_path):
    root = voc_tree(tmp_path / "VOC2007")
    src = build_source("voc", root)
    assert len(src) == 2 and src.path(1).endswith("JPEGImages/000002.jpg") and src[0]["label"] == -1


@pytest.mark.parametrize("kind,split,needle", [
    ("folder", None, "empty"), ("imagefolder", None, "empty"), ("folder", "nope", "nope"),
    ("voc", "test", "ImageSets/Main/test.txt"), ("filelist", "missing", "missing.txt"),
])
def test_empty_or_missing_raises_naming_path(tmp_path, kind, split, needle):
    (tmp_path / "empty" / "cls").mkdir(parents=True)  # a class folder with no image
    root = voc_tree(tmp_path / "voc") if kind == "voc" else tmp_path / "empty"
    with pytest.raises(ValueError) as e:
        build_source(kind, root, split=split)
    assert needle in str(e.value) and str(root) in str(e.value)


def test_wrong_root_and_kind_fail_early(tmp_path):
    (tmp_path / "list.txt").write_text("missing/a.jpg 1\n")
    with pytest.raises(ValueError, match="first listed image not found"):
        build_source("filelist", tmp_path, list_file=tmp_path / "list.txt")
    with pytest.raises(ValueError, match="imagefolder, folder, filelist, voc"):
        build_source("lmdb", tmp_path)
    with pytest.raises(ValueError, match="no image files"):
        ImageSource([])


# ----------------------------------------------------------------------------- real fixtures

def test_voc_fixture_truncated_jpeg_is_skipped():
    root = shared_path("data", "voc_fixture", "VOCdevkit", "VOC2007")
    src = build_source("voc", root, "trainval", transform=val_transform(64))
    counter, ids = SkipCounter(), []
    for batch in make_loader(src, batch_size=8):
        counter.update(batch)
        ids += [p.rsplit("/", 1)[1] for p in batch["path"]]
    assert len(src) == 5 and ids == ["000002.jpg", "000003.jpg", "000004.jpg", "000005.jpg"]
    assert counter.counts == {"truncated": 1}


def test_imagenet_sample_as_folder():
    src = build_source("folder", shared_path("data", "imagenet_sample", "images"),
                       transform=val_transform(32))
    assert len(src) == 500
    counter, gray, n = SkipCounter(), 0, 0
    for batch in make_loader(src, batch_size=100, num_workers=2):
        counter.update(batch)
        gray, n = gray + int(batch["gray_file"].sum()), n + len(batch["index"])
    assert (n, gray, counter.total) == (500, 9, 0)


# ----------------------------------------------------------------------------- transforms, loader

def coord_image(w, h):
    """R = x, G = y: a crop's position and flip can be read back from its pixels."""
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))


def test_train_transform_is_a_crop_or_flipped_crop():
    torch.manual_seed(0)
    flips = 0
    for _ in range(8):
        t = train_transform(176)(coord_image(240, 200))
        assert t.dtype == torch.uint8 and t.shape == (3, 176, 176)
        cols, rows = t[0, 0].long(), t[1, :, 0].long()
        assert torch.equal(rows.diff(), torch.ones(175, dtype=torch.long))
        step = int(cols[1] - cols[0])
        assert step in (1, -1) and torch.equal(cols.diff(), torch.full((175,), step))
        flips += step == -1
    assert 0 < flips < 8


def test_small_images_upscaled_and_val_centre_crop():
    small = train_transform(176)(coord_image(120, 60))
    assert small.shape == (3, 176, 176) and small.dtype == torch.uint8
    v = val_transform(64, resize=128)(coord_image(256, 128))  # short side already 128
    assert v.shape == (3, 64, 64)
    assert int(v[0, 0, 0]) == 96 and int(v[1, 0, 0]) == 32  # centre: x0 = (256-64)/2 = 96


def test_loader_deterministic_for_a_seed(tmp_path):
    for i in range(12):
        rgb_image(tmp_path / f"{i:02d}.png", 50, 40, seed=i)
    src = build_source("folder", tmp_path, transform=train_transform(24))

    def run(seed, workers):
        torch.manual_seed(123)  # workers=0: augmentation uses the global RNG
        batches = list(make_loader(src, 5, shuffle=True, num_workers=workers, seed=seed))
        return torch.cat([b["index"] for b in batches]), torch.cat([b["image"] for b in batches])

    i0, x0 = run(7, 0)
    i1, x1 = run(7, 0)
    assert torch.equal(i0, i1) and torch.equal(x0, x1) and sorted(i0.tolist()) == list(range(12))
    assert not torch.equal(run(8, 0)[0], i0)
    w0, w1 = run(7, 2), run(7, 2)
    assert torch.equal(w0[0], i0) and torch.equal(w0[1], w1[1])  # same order; workers seeded


def test_loader_with_distributed_sampler(tmp_path):
    for i in range(6):
        rgb_image(tmp_path / f"{i}.png", 20, 20, seed=i)
    src = build_source("folder", tmp_path, transform=val_transform(16))
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(src, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        seen += [b["index"] for b in make_loader(src, 2, sampler=sampler)]
    assert sorted(torch.cat(seen).tolist()) == list(range(6))  # each rank gets its half
    with pytest.raises(ValueError, match="sampler"):
        make_loader(src, 2, shuffle=True, sampler=sampler)


def _val_folder(root, per_class=3):
    """ImageNet-style val: ILSVRC2012_val_%08d names spread over class folders, so the
    first N by name mix classes while the first N listed (class by class) do not."""
    from PIL import Image
    classes = ["n01", "n02", "n03"]
    for i in range(len(classes) * per_class):
        folder = root / "val" / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    return root


def test_limit_takes_the_first_files_by_name_across_classes(tmp_path):
    root = _val_folder(tmp_path)
    src = build_source("imagefolder", str(root), "val", limit=3)
    names = [os.path.basename(src[i]["path"]) for i in range(len(src))]
    assert names == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]  # the official order
    assert sorted(int(src[i]["label"]) for i in range(len(src))) == [0, 1, 2]  # all three classes, not class 0


def test_validation_on_the_training_list_is_refused(tmp_path):
    from pretext.data.sources import DataConfig, source_for
    root = _val_folder(tmp_path)
    lst = tmp_path / "train.txt"
    lst.write_text("\n".join(f"val/n01/ILSVRC2012_val_{i:08d}.JPEG 0" for i in (1, 4, 7)))
    same = DataConfig(kind="filelist", root=str(root), train_list=str(lst), val_list=str(lst))
    with pytest.raises(ValueError, match="validation split is the training split"):
        source_for(same, "val")
    no_val = DataConfig(kind="filelist", root=str(root), train_list=str(lst), val_split=None)
    with pytest.raises(ValueError, match="set data.val_list"):
        source_for(no_val, "val")
    held_out = tmp_path / "val.txt"
    held_out.write_text(f"val/n02/ILSVRC2012_val_{2:08d}.JPEG 1\n")
    ok = DataConfig(kind="filelist", root=str(root), train_list=str(lst), val_list=str(held_out))
    assert len(source_for(ok, "val")) == 1 and len(source_for(ok, "train")) == 3
    folder = DataConfig(kind="imagefolder", root=str(root), train_split="val", val_split="val")
    with pytest.raises(ValueError, match="validation split is the training split"):
        source_for(folder, "val")
