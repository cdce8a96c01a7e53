from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from sdk.errors import ConfigError, ImageDecodeError, ImageTooLargeError, InputTypeError
from sdk.preprocess import (
    CLIP_MEAN,
    CLIP_PAD_RGB,
    CLIP_STD,
    IMAGENET_MEAN,
    PreprocessConfig,
    load_image,
    make_views,
    model_inputs,
    normalise,
    preprocess,
    tile,
)

SIZES = [
    (53, 37),
    (37, 53),
    (300, 200),
    (225, 300),
    (301, 224),
    (1, 1),
    (5000, 20),
    (20, 5000),
    (448, 448),
    (449, 448),
]


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + w * 7 + h)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# --- reference pipeline, written independently from the reference's description -------------------------
def _ref_global_f32(img: Image.Image) -> np.ndarray:
    """HF CLIPImageProcessor (PIL backend): resize shortest edge 224 (int(224*long/short)), bicubic,
    centre crop with floor offsets, float64 rescale cast to float32, normalise in float32. -> [3,224,224]"""
    w, h = img.size
    size = (224, int(224 * h / w)) if w <= h else (int(224 * w / h), 224)
    r = np.array(img.resize(size, Image.BICUBIC, reducing_gap=None))
    H, W = r.shape[:2]
    t, lft = (H - 224) // 2, (W - 224) // 2
    r = r[t : t + 224, lft : lft + 224].transpose(2, 0, 1)
    x = (r.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.array(CLIP_MEAN, np.float32)[:, None, None]
    std = np.array(CLIP_STD, np.float32)[:, None, None]
    return (x - mean) / std


def _ref_canvas_f32(img: Image.Image) -> np.ndarray:
    """PadToSquare(int(c*255) of CLIP mean) + Resize(448, bicubic) + ToTensor + Normalize. -> [3,448,448]"""
    bg = tuple(int(c * 255) for c in (0.48145466, 0.4578275, 0.40821073))
    w, h = img.size
    if w > h:
        sq = Image.new(img.mode, (w, w), bg)
        sq.paste(img, (0, (w - h) // 2))
    elif h > w:
        sq = Image.new(img.mode, (h, h), bg)
        sq.paste(img, ((h - w) // 2, 0))
    else:
        sq = img
    r = np.array(sq.resize((448, 448), Image.BICUBIC)).transpose(2, 0, 1)
    x = r.astype(np.float32) / np.float32(255)
    return (x - np.array(CLIP_MEAN, np.float32)[:, None, None]) / np.array(CLIP_STD, np.float32)[
        :, None, None
    ]


def test_pad_colour_is_truncated_clip_mean():
    assert CLIP_PAD_RGB == (122, 116, 104)  # int(x*255), not round (which would give 123, 117, 104)
    assert PreprocessConfig().pad_rgb == (122, 116, 104)


def test_uint8_scalings_agree():
    u = np.arange(256)
    hf = (u.astype(np.float64) * (1 / 255)).astype(np.float32)
    tv = u.astype(np.float32) / np.float32(255)
    assert np.array_equal(hf, tv)


@pytest.mark.parametrize("w,h", SIZES)
def test_views_bit_exact_with_reference(w, h):
    img = _noise(w, h)
    g, c = make_views(img, PreprocessConfig())
    assert g.shape == (224, 224, 3) and c.shape == (448, 448, 3) and g.dtype == c.dtype == np.uint8
    gf, tiles = model_inputs(g, c)
    assert np.array_equal(gf[0], _ref_global_f32(img))
    ref_c = _ref_canvas_f32(img)
    ref_tiles = np.stack(
        [ref_c[:, :224, :224], ref_c[:, :224, 224:], ref_c[:, 224:, :224], ref_c[:, 224:, 224:]]
    )
    assert np.array_equal(tiles[0], ref_tiles)


@pytest.mark.parametrize("w,h", [(53, 37), (225, 300), (5000, 20), (1, 1)])
def test_global_view_matches_transformers_clip_processor(w, h):
    tr = pytest.importorskip("transformers")
    cls = getattr(tr, "CLIPImageProcessorPil", None)
    if cls is None:
        from transformers import CLIPImageProcessor as cls
    img = _noise(w, h, seed=3)
    ref = np.asarray(cls()(img)["pixel_values"][0])
    g, _ = make_views(img, PreprocessConfig())
    assert np.array_equal(normalise(g)[0], ref)


def test_normalise_and_tile_layout():
    c = np.zeros((448, 448, 3), np.uint8)
    c[:224, :224], c[:224, 224:], c[224:, :224], c[224:, 224:] = 10, 20, 30, 40
    f = normalise(c)
    assert f.shape == (1, 3, 448, 448) and f.dtype == np.float32
    t = tile(f)
    assert t.shape == (1, 4, 3, 224, 224)
    for k, v in enumerate((10, 20, 30, 40)):
        expect = (np.float32(v) / np.float32(255) - np.float32(CLIP_MEAN[0])) / np.float32(CLIP_STD[0])
        assert np.all(t[0, k, 0] == expect)
    assert tile(f[0]).shape == (4, 3, 224, 224)
    with pytest.raises(InputTypeError, match="uint8"):
        normalise(c.astype(np.float32))
    with pytest.raises(InputTypeError, match="square"):
        tile(np.zeros((3, 10, 12), np.float32))


# --- sources -------------------------------------------------------------------------------------------
def test_all_source_types_agree(tmp_path):
    img = _noise(31, 17)
    data = _encode(img, "PNG")
    p = tmp_path / "a.png"
    p.write_bytes(data)
    ref = np.asarray(img)
    srcs = [str(p), p, data, bytearray(data), memoryview(data), io.BytesIO(data), img, ref]
    for s in srcs:
        out = load_image(s)
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), ref), type(s)
    with open(p, "rb") as f:
        assert np.array_equal(np.asarray(load_image(f)), ref)


def test_preprocess_equals_make_views(tmp_path):
    img = _noise(120, 80)
    p = tmp_path / "x.png"
    img.save(p)
    g1, c1 = preprocess(p, PreprocessConfig())
    g2, c2 = make_views(img, PreprocessConfig())
    assert np.array_equal(g1, g2) and np.array_equal(c1, c2)


def test_make_views_custom_sizes_and_non_rgb():
    cfg = PreprocessConfig(global_size=32, canvas_size=64, mean=IMAGENET_MEAN, std=(0.2, 0.2, 0.2))
    g, c = make_views(_noise(50, 20).convert("L"), cfg)
    assert g.shape == (32, 32, 3) and c.shape == (64, 64, 3)
    with pytest.raises(InputTypeError, match="PIL image"):
        make_views(np.zeros((4, 4, 3), np.uint8), cfg)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "arr,expect",
    [
        (np.full((4, 5), 200, np.uint8), (200, 200, 200)),
        (np.full((4, 5, 1), 7, np.uint8), (7, 7, 7)),
        (np.full((4, 5, 3), (1, 2, 3), np.uint8), (1, 2, 3)),
        (np.full((4, 5, 4), (10, 20, 30, 255), np.uint8), (10, 20, 30)),
        (np.full((4, 5, 4), (10, 20, 30, 0), np.uint8), CLIP_PAD_RGB),
        (np.full((4, 5), 65535, np.uint16), (255, 255, 255)),
        (np.full((4, 5, 3), 257 * 100, np.uint16), (100, 100, 100)),
        (np.ones((4, 5), bool), (255, 255, 255)),
        (np.full((4, 5, 3), 0.5, np.float32), (128, 128, 128)),
        (np.full((4, 5), 1.0, np.float64), (255, 255, 255)),
    ],
)
def test_numpy_inputs(arr, expect):
    out = load_image(arr)
    assert out.size == (5, 4) and out.mode == "RGB"
    assert tuple(np.asarray(out)[0, 0]) == tuple(expect)


def test_numpy_non_contiguous():
    a = np.ascontiguousarray(np.asarray(_noise(8, 6)))[:, ::-1]
    assert np.array_equal(np.asarray(load_image(a)), a)


# --- modes ---------------------------------------------------------------------------------------------
def _px(img: Image.Image) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(load_image(img))[0, 0])


def test_modes_to_rgb():
    rgb = Image.new("RGB", (3, 2), (200, 100, 50))
    assert _px(rgb) == (200, 100, 50)
    for mode in ("1", "L", "CMYK", "YCbCr", "HSV", "RGBA", "RGBa", "RGBX", "P"):
        out = load_image(rgb.convert(mode))
        assert out.mode == "RGB" and out.size == (3, 2), mode
    assert _px(rgb.convert("CMYK")) == (200, 100, 50)
    assert _px(rgb.convert("RGBA")) == (200, 100, 50)
    assert _px(Image.new("L", (2, 2), 77)) == (77, 77, 77)
    assert _px(Image.new("1", (2, 2), 1)) == (255, 255, 255)
    assert _px(Image.new("HSV", (2, 2), (0, 255, 255))) == (255, 0, 0)
    grey = _px(Image.new("LAB", (2, 2), (128, 128, 128)))  # L*=50, a*=b*=0 -> mid grey
    assert max(grey) - min(grey) <= 1 and 110 <= grey[0] <= 130


def test_alpha_composited_on_pad_colour():
    assert _px(Image.new("RGBA", (2, 2), (255, 0, 0, 0))) == CLIP_PAD_RGB
    assert _px(Image.new("LA", (2, 2), (255, 0))) == CLIP_PAD_RGB
    assert _px(Image.new("LA", (2, 2), (200, 255))) == (200, 200, 200)
    assert _px(Image.new("LA", (2, 2), (200, 0)).convert("La")) == CLIP_PAD_RGB
    half = _px(Image.new("RGBA", (2, 2), (255, 255, 255, 128)))
    for c, bg in zip(half, CLIP_PAD_RGB, strict=True):
        assert abs(c - (255 * 128 + bg * 127) / 255) <= 1
    assert _px(Image.new("RGBa", (2, 2), (0, 0, 0, 0))) == CLIP_PAD_RGB
    # palette image with a transparent index
    p = Image.new("P", (2, 2), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.info["transparency"] = 1
    assert _px(p) == CLIP_PAD_RGB
    del p.info["transparency"]
    assert _px(p) == (10, 20, 30)
    assert _px(Image.new("LA", (2, 2), (50, 255)).convert("PA")) == (50, 50, 50)
    assert load_image(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), background=(1, 2, 3)).getpixel((0, 0)) == (
        1,
        2,
        3,
    )


def test_wide_modes_are_scaled_not_clipped():
    a16 = np.array([[0, 257 * 100, 65535]], np.uint16)
    assert np.asarray(load_image(Image.fromarray(a16)))[0, :, 0].tolist() == [0, 100, 255]
    big = Image.frombytes("I;16B", (3, 1), a16.astype(">u2").tobytes())
    assert big.mode == "I;16B"
    assert np.asarray(load_image(big))[0, :, 0].tolist() == [0, 100, 255]
    i32 = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.int32))
    assert i32.mode == "I"
    assert np.asarray(load_image(i32))[0, :, 0].tolist() == [0, 100, 255]
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], np.int32))  # outside 0..65535: stretched
    assert np.asarray(load_image(wide))[0, :, 0].tolist() == [0, 128, 255]
    f01 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert np.asarray(load_image(f01))[0, :, 0].tolist() == [0, 128, 255]
    f255 = Image.fromarray(np.array([[0.0, 100.0, 255.0]], np.float32))
    assert np.asarray(load_image(f255))[0, :, 0].tolist() == [0, 100, 255]
    fnan = Image.fromarray(np.array([[np.nan, 0.5, 1.0]], np.float32))
    assert np.asarray(load_image(fnan))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_applied():
    img = _noise(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to view
    data = _encode(img, "JPEG", exif=exif, quality=95)
    assert load_image(data).size == (20, 40)
    assert load_image(data, exif_transpose=False).size == (40, 20)


def test_reduce_for_uses_jpeg_draft():
    data = _encode(_noise(2000, 1500), "JPEG", quality=80)
    full = load_image(data)
    assert full.size == (2000, 1500)
    small = load_image(data, reduce_for=224)
    assert small.size == (1000, 750)  # 1/2 scale: 1/4 would leave 375 < 2*224
    assert min(load_image(data, reduce_for=100).size) >= 200
    assert load_image(data, draft_size=224).size == (1000, 750)
    png = _encode(_noise(1000, 1000), "PNG")
    assert load_image(png, reduce_for=100).size == (1000, 1000)  # not a JPEG: full decode
    g, c = preprocess(data, reduce_for=224)
    assert g.shape == (224, 224, 3) and c.shape == (448, 448, 3)


# --- errors --------------------------------------------------------------------------------------------
def test_empty_inputs(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.jpg.*empty \(0 bytes\)"):
        load_image(p)
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(io.BytesIO())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    data = _encode(_noise(200, 150), fmt)
    cut = data[: len(data) // 2]
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(cut)
    with pytest.raises(ImageDecodeError, match=r"cut\.(jpeg|png).*(truncated|cannot be decoded)"):
        load_image(p)
    with pytest.raises(ImageDecodeError, match="truncated|cannot be decoded"):
        load_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_refuses_when_truncated_loading_enabled_globally(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageDecodeError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(_encode(_noise(8, 8), "PNG"))


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, this is not an image\n")
    with pytest.raises(ImageDecodeError, match=r"notes\.txt.*not an image"):
        load_image(p)
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(b"\x00\x01garbage")


def test_missing_path_and_directory(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageDecodeError, match=r"nope\.jpg.*does not exist"):
        load_image(missing)
    with pytest.raises(ImageDecodeError, match=r"is a directory"):
        load_image(tmp_path)


def test_over_limit_pixels(tmp_path):
    data = _encode(_noise(100, 80), "PNG")
    with pytest.raises(ImageTooLargeError, match=r"100x80 = 8,000 pixels.*limit of 5,000"):
        load_image(data, max_pixels=5000)
    with pytest.raises(ImageTooLargeError, match="limit"):
        preprocess(data, PreprocessConfig(max_pixels=5000))
    with pytest.raises(ImageTooLargeError, match="numpy image is 100x80"):
        load_image(np.zeros((80, 100, 3), np.uint8), max_pixels=5000)
    with pytest.raises(ImageTooLargeError, match="PIL image"):
        load_image(_noise(100, 80), max_pixels=5000)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h and that has no pixel data: a size check must fire before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_size_checked_before_decoding():
    with pytest.raises(ImageTooLargeError, match="9000x8000"):
        load_image(_png_header_only(9000, 8000))  # 72M > 64M default, < Pillow's bomb limit
    with pytest.raises(ImageTooLargeError, match="decompression-bomb|limit"):
        load_image(_png_header_only(20000, 20000), max_pixels=10**10)  # Pillow's own bomb error converted


def test_bad_numpy_inputs():
    with pytest.raises(InputTypeError, match="dtype int32"):
        load_image(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(InputTypeError, match=r"shape \(4, 4, 2\)"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(InputTypeError, match=r"shape \(4,\)"):
        load_image(np.zeros((4,), np.uint8))
    with pytest.raises(InputTypeError, match=r"shape \(0, 4\)"):
        load_image(np.zeros((0, 4), np.uint8))
    with pytest.raises(InputTypeError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4), 2.0, np.float32))
    with pytest.raises(InputTypeError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4), np.nan, np.float32))


@pytest.mark.parametrize("bad", [3, None, 1.5, ["a.jpg"], {"x": 1}])
def test_wrong_types(bad):
    with pytest.raises(InputTypeError, match="image must be"):
        load_image(bad)


def test_text_mode_file_object(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("x")
    with open(p) as f, pytest.raises(InputTypeError, match="binary mode"):
        load_image(f)


# --- config --------------------------------------------------------------------------------------------
def test_config_round_trip():
    cfg = PreprocessConfig()
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["pad_rgb"] == [122, 116, 104] and d["global_size"] == 224 and d["canvas_size"] == 448
    assert PreprocessConfig.from_dict(json.loads(json.dumps(d))) == cfg
    inet = PreprocessConfig.imagenet()
    assert PreprocessConfig.from_dict(inet.to_dict()) == inet and inet.pad_rgb == (123, 116, 103)


@pytest.mark.parametrize(
    "d,msg",
    [
        ({"bogus": 1}, "unknown preprocess config key"),
        ({"global_size": 0}, "global_size must be a positive integer"),
        ({"canvas_size": 447}, "canvas_size must be even"),
        ({"mean": [0.5, 0.5]}, "mean must be 3 numbers"),
        ({"std": [0.5, 0.0, 0.5]}, "std must be > 0"),
        ({"pad_rgb": [0, 0, 256]}, "pad_rgb must be 3 integers"),
        ({"max_pixels": -1}, "max_pixels must be a positive integer"),
    ],
)
def test_config_errors(d, msg):
    with pytest.raises(ConfigError, match=msg):
        PreprocessConfig.from_dict(d)


def test_config_from_dict_not_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        PreprocessConfig.from_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_multi_frame_file_first_frame_and_closed(tmp_path):
    import gc

    frames = [Image.new("RGB", (20, 10), (i * 40, 0, 0)) for i in range(3)]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    assert load_image(p).getpixel((0, 0)) == (0, 0, 0)
    with pytest.raises(ImageTooLargeError):
        load_image(p, max_pixels=10)
    gc.collect()


def test_msed_images_bit_exact(msed_dir: Path):
    paths = sorted((msed_dir / "dev" / "images").glob("*"))[:3]
    assert paths
    for p in paths:
        g, c = preprocess(p)
        gf, tiles = model_inputs(g, c)
        with Image.open(p) as im:
            ref_img = im.convert("RGB")  # what the reference's dataset does
        assert np.array_equal(gf[0], _ref_global_f32(ref_img))
        assert np.array_equal(tiles[0, 3], _ref_canvas_f32(ref_img)[:, 224:, 224:])
