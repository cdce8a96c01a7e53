"""Image decoding and the two fixed views the model takes: the ONE implementation for training and runtime.

Pipeline (matches the reference trainer bit for bit on RGB images, see tests/test_preprocess.py):

* global view: the reference feeds `CLIPImageProcessor()` (HF, PIL backend): short side -> 224 with
  `long = int(224 * long / short)`, PIL bicubic (`reducing_gap=None`), centre crop with
  `top = (h - 224) // 2`, `left = (w - 224) // 2`, then `float32(float64(u8) * (1/255))`, `(x - mean) / std`.
* canvas: the reference's `PadToSquare` + `transforms.Resize(448, BICUBIC)`: pad to a square with
  `int(c * 255)` of the CLIP mean (= (122, 116, 104); truncation, not rounding), the image pasted at
  `((m - w) // 2, (m - h) // 2)`, PIL bicubic to 448x448, `ToTensor` (`float32(u8) / 255`), `Normalize`.
  The four 224x224 tiles are TL, TR, BL, BR.
* Both scalings give the same float32 for every uint8 value (checked in the tests), so one `normalise`
  serves both views. We hand the uint8 views to the graph, whose tiler does the scaling on the device.

Deliberate differences from the reference (which does `Image.open(p).convert("RGB")`), none of which
change an RGB image without an EXIF orientation (every image of MSED):
* EXIF orientation is applied (`ImageOps.exif_transpose`), as a phone photo is meant to be seen.
* Alpha is composited onto the pad colour instead of being dropped (transparent pixels become the
  neutral CLIP-mean colour, not whatever colour the encoder stored under them).
* 16-bit and float images are scaled to 8 bits instead of clipped (see `_to_rgb`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from sdk.errors import ConfigError, ImageDecodeError, ImageTooLargeError, InputTypeError

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # DINOv2 / ViT backbones
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def pad_colour(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The pad colour the reference derives from a mean: `int(c * 255)` (truncates: CLIP -> (122, 116, 104))."""
    return tuple(int(c * 255) for c in mean)  # type: ignore[return-value]


CLIP_PAD_RGB: tuple[int, int, int] = pad_colour(CLIP_MEAN)
IMAGENET_PAD_RGB: tuple[int, int, int] = pad_colour(IMAGENET_MEAN)
DEFAULT_MAX_PIXELS = 64_000_000

_BICUBIC = Image.Resampling.BICUBIC


# --- config -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's two uint8 views (saved in config.json and in bundle manifests)."""

    global_size: int = 224  # global view: short side -> global_size (bicubic), centre crop
    canvas_size: int = 448  # canvas: pad to square, resize (bicubic); cut into 2x2 tiles of canvas_size/2
    mean: tuple[float, float, float] = CLIP_MEAN  # normalisation happens in the graph (tiler), not here
    std: tuple[float, float, float] = CLIP_STD
    pad_rgb: tuple[int, int, int] = CLIP_PAD_RGB
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard, checked before decoding pixels

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"preprocess.{name} must be a positive integer, got {v!r}")

        for name in ("global_size", "canvas_size", "max_pixels"):
            positive_int(name)
        if self.canvas_size % 2:
            raise ConfigError(f"preprocess.canvas_size must be even (2x2 tiles), got {self.canvas_size}")
        for name in ("mean", "std", "pad_rgb"):
            v = getattr(self, name)
            if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 3:
                raise ConfigError(f"preprocess.{name} must be 3 numbers (R, G, B), got {v!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in v
            ):
                raise ConfigError(f"preprocess.{name} must be 3 finite numbers, got {v!r}")
            object.__setattr__(self, name, tuple(float(c) for c in v))
        if any(c <= 0 for c in self.std):
            raise ConfigError(f"preprocess.std must be > 0, got {self.std!r}")
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in self.pad_rgb):
            raise ConfigError(f"preprocess.pad_rgb must be 3 integers in 0..255, got {self.pad_rgb!r}")
        object.__setattr__(self, "pad_rgb", tuple(int(c) for c in self.pad_rgb))

    @property
    def tile_size(self) -> int:
        return self.canvas_size // 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"preprocess config must be a mapping, got {type(d).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(f"unknown preprocess config key(s) {unknown}; valid keys: {valid}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    @classmethod
    def imagenet(cls, **kw: Any) -> PreprocessConfig:
        """Config for DINOv2 / ImageNet-normalised backbones (pad colour from the ImageNet mean)."""
        return cls(mean=IMAGENET_MEAN, std=IMAGENET_STD, pad_rgb=IMAGENET_PAD_RGB, **kw)


# --- decoding -----------------------------------------------------------------------------------------
def _check_pixels(w: int, h: int, max_pixels: int, what: str) -> None:
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{what} is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} pixels (max_pixels)"
        )


def _describe(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return f"image '{os.fspath(src)}'"
    name = getattr(src, "name", None)
    if isinstance(name, str):
        return f"image '{name}'"
    return "image"


def _open(src: Any) -> tuple[Image.Image, str]:
    """Open `src` lazily (header only). Returns (image, description for messages)."""
    what = _describe(src)
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if os.path.isdir(path):
            raise ImageDecodeError(f"{what} is a directory, not an image file")
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            raise ImageDecodeError(f"{what} does not exist") from None
        except OSError as e:
            raise ImageDecodeError(f"{what} cannot be read: {e}") from e
        if size == 0:
            raise ImageDecodeError(f"{what} is empty (0 bytes)")
        fp: Any = path
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise ImageDecodeError("image bytes are empty (0 bytes)")
        fp = io.BytesIO(data)
    elif hasattr(src, "read"):
        if isinstance(src, io.TextIOBase):
            raise InputTypeError(f"{what} is a text-mode file; open it in binary mode ('rb')")
        try:
            data = src.read()
        except OSError as e:
            raise ImageDecodeError(f"{what} cannot be read: {e}") from e
        if not isinstance(data, (bytes, bytearray)):
            raise InputTypeError(
                f"{what}: file object returned {type(data).__name__}, expected bytes (open with 'rb')"
            )
        if not data:
            raise ImageDecodeError(f"{what} is empty (0 bytes)")
        fp = io.BytesIO(bytes(data))
    else:  # pragma: no cover - callers dispatch first
        raise InputTypeError(f"unsupported image type {type(src).__name__}")
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{what} is too large for Pillow's decompression-bomb limit: {e}") from e
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{what} is not an image in a format Pillow can read") from None
    except FileNotFoundError:
        raise ImageDecodeError(f"{what} does not exist") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(f"{what} cannot be decoded: {e}") from e
    return img, what


def _load_pixels(img: Image.Image, what: str) -> None:
    """Force a full decode so a truncated file fails here (never with LOAD_TRUNCATED_IMAGES)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # somebody else set the global: refuse to hide truncation
        raise ImageDecodeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process; truncated images would be "
            "silently padded with grey. Set it back to False."
        )
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{what} is too large for Pillow's decompression-bomb limit: {e}") from e
    except MemoryError as e:
        raise ImageTooLargeError(f"{what} does not fit in memory: {e}") from e
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, zlib.error, struct.error...
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            raise ImageDecodeError(f"{what} is truncated: {msg}") from e
        raise ImageDecodeError(f"{what} cannot be decoded: {msg}") from e


def _draft(img: Image.Image, reduce_for: int) -> None:
    """JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale while the short side stays >= 2*reduce_for."""
    if img.format != "JPEG" or reduce_for <= 0:
        return
    w, h = img.size
    short = min(w, h)
    need = 2 * reduce_for
    if short < 2 * need:  # not even a 2x reduction possible
        return
    # Pillow picks the largest scale s in {1,2,4,8} with w // s >= req_w and h // s >= req_h.
    k = short / need
    img.draft(None, (max(1, math.ceil(w / k)), max(1, math.ceil(h / k))))


def _scale16(a: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 by round(x / 257): 0 -> 0, 65535 -> 255, proportional in between (no clipping)."""
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _float_to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def _int_image_to_u8(a: np.ndarray) -> np.ndarray:
    """Mode "I" (int32): values within 0..65535 are 16-bit samples (x/257); otherwise the observed range
    is stretched linearly to 0..255 (min -> 0, max -> 255)."""
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo >= 0 and hi <= 65535:
        return _scale16(a)
    if hi == lo:
        return np.zeros(a.shape, np.uint8)
    return _float_to_u8((a.astype(np.float64) - lo) / (hi - lo))


def _float_image_to_u8(a: np.ndarray) -> np.ndarray:
    """Mode "F" (float32): non-finite -> 0; data within [0, 1] is taken as unit-scaled (x*255); within
    [0, 255] as 8-bit-scaled (rounded); anything else has its observed range stretched to 0..255."""
    a = np.where(np.isfinite(a), a, 0.0).astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return _float_to_u8(a)
    if lo >= 0.0 and hi <= 255.0:
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return _float_to_u8((a - lo) / (hi - lo))


def _composite(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGBA (any alpha mode, converted first) -> RGB over `background` (Pillow's C paste with a mask)."""
    if img.mode == "La":  # premultiplied LA: Pillow converts it only to LA
        img = img.convert("LA")
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    out = Image.new("RGB", rgba.size, background)
    out.paste(rgba.convert("RGB"), (0, 0), rgba.getchannel("A"))
    return out


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Alpha is composited onto `background`; wide modes are scaled."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _composite(img, background)
    if mode == "P":
        if "transparency" in img.info or img.has_transparency_data:
            return _composite(img, background)
        return img.convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img)
        u8 = _int_image_to_u8(a.astype(np.int64)) if mode == "I" else _scale16(a)
        return Image.fromarray(u8).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_image_to_u8(np.asarray(img))).convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms  # lazy: only LAB needs littlecms

        lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
        return ImageCms.applyTransform(img, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))
    try:  # 1, L, CMYK, YCbCr, HSV and whatever else Pillow can convert
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageDecodeError(f"image mode {mode!r} cannot be converted to RGB: {e}") from e


def _from_numpy(a: np.ndarray) -> Image.Image:
    """HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA); uint8, uint16, bool or float in [0, 1]."""
    shape_ok = a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))
    if not shape_ok or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputTypeError(
            f"numpy image has shape {a.shape}; expected HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) with H, W > 0"
        )
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.uint16:
        u8 = _scale16(a)
    elif a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        finite = bool(np.all(np.isfinite(a)))
        if not finite or a.min() < 0.0 or a.max() > 1.0:
            got = "non-finite values (NaN/inf)" if not finite else f"range [{a.min()}, {a.max()}]"
            raise InputTypeError(
                f"numpy float image (dtype {a.dtype}, shape {a.shape}) must hold finite values in [0, 1], got {got}"
            )
        u8 = _float_to_u8(a)
    else:
        raise InputTypeError(
            f"numpy image has dtype {a.dtype} (shape {a.shape}); expected uint8, uint16, bool or float in [0, 1]"
        )
    if u8.ndim == 3 and u8.shape[2] == 1:
        u8 = u8[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(u8))  # uint8 HxW / HxWx3 / HxWx4 -> L / RGB / RGBA


def load_image(
    src: Any,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduce_for: int | None = None,
    background: tuple[int, int, int] = CLIP_PAD_RGB,
    exif_transpose: bool = True,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode `src` into an 8-bit RGB PIL image, EXIF orientation applied.

    src: str / PathLike path, bytes / bytearray / memoryview, binary file object, PIL image or numpy
    array. `max_pixels` is checked from the header before any pixel is decoded. `reduce_for` (alias
    `draft_size`): if set and the file is a JPEG at least 4x larger than 2*reduce_for on its short side,
    decode at a reduced DCT scale (keeps the short side >= 2*reduce_for). Off by default: only a full
    decode is bit-exact with the reference. Alpha is composited onto `background`.
    Raises ImageDecodeError, ImageTooLargeError, InputTypeError.
    """
    if reduce_for is None:
        reduce_for = draft_size
    if isinstance(src, np.ndarray):
        if src.ndim >= 2:
            _check_pixels(src.shape[1], src.shape[0], max_pixels, "numpy image")
        return _to_rgb(_from_numpy(src), background)
    if isinstance(src, Image.Image):
        img, what = src, "PIL image"
    elif isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(src, "read"):
        img, what = _open(src)
    else:
        raise InputTypeError(
            f"image must be a path, bytes, a binary file object, a PIL image or a numpy array, "
            f"got {type(src).__name__}"
        )
    opened = img is not src
    try:
        out = _decode(img, what, max_pixels, reduce_for if opened else None, background, exif_transpose)
        if opened and out is img and _holds_file(img):
            out = img.copy()  # multi-frame files keep their file open after load(): detach, then close
    finally:
        if opened and _holds_file(img):
            img.close()
    return out


def _holds_file(img: Image.Image) -> bool:
    """Whether Pillow still holds the file open (before load, or after load for multi-frame formats)."""
    for attr in ("fp", "_fp"):
        f = getattr(img, attr, None)
        if f is not None and hasattr(f, "close") and not getattr(f, "closed", True):
            return True
    return False


def _decode(
    img: Image.Image,
    what: str,
    max_pixels: int,
    reduce_for: int | None,
    background: tuple[int, int, int],
    exif_transpose: bool,
) -> Image.Image:
    _check_pixels(img.size[0], img.size[1], max_pixels, what)
    if reduce_for is not None:
        _draft(img, int(reduce_for))
    _load_pixels(img, what)
    if img.size[0] == 0 or img.size[1] == 0:
        raise ImageDecodeError(f"{what} has zero width or height ({img.size[0]}x{img.size[1]})")
    if exif_transpose:
        # a corrupt EXIF block must not lose an otherwise good image
        with contextlib.suppress(Exception):
            img = ImageOps.exif_transpose(img)
    return _to_rgb(img, background)


# --- views --------------------------------------------------------------------------------------------
def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img.resize(size, _BICUBIC, reducing_gap=None)


def global_view(img: Image.Image, size: int = 224) -> np.ndarray:
    """Short side -> size (bicubic), centre crop size x size. -> uint8 [size, size, 3] (HF CLIP processor)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)  # same expression (and float rounding) as the reference
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    a = np.asarray(_resize(img, (new_w, new_h)))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.ascontiguousarray(a[top : top + size, left : left + size])


def canvas_view(
    img: Image.Image, size: int = 448, pad_rgb: tuple[int, int, int] = CLIP_PAD_RGB
) -> np.ndarray:
    """Pad to a square with pad_rgb (image centred, floor offsets), resize size x size (bicubic). -> uint8 HWC."""
    w, h = img.size
    if w != h:
        m = max(w, h)
        square = Image.new("RGB", (m, m), tuple(pad_rgb))
        square.paste(img, ((m - w) // 2, (m - h) // 2))
        img = square
    return np.asarray(_resize(img, (size, size)))


def make_views(img: Image.Image, cfg: PreprocessConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (global uint8 [G, G, 3], canvas uint8 [C, C, 3]), HWC RGB, G = cfg.global_size, C = cfg.canvas_size."""
    cfg = cfg or PreprocessConfig()
    if not isinstance(img, Image.Image):
        raise InputTypeError(f"make_views takes a PIL image (use load_image first), got {type(img).__name__}")
    if img.mode != "RGB":
        img = _to_rgb(img, cfg.pad_rgb)
    return global_view(img, cfg.global_size), canvas_view(img, cfg.canvas_size, cfg.pad_rgb)


def preprocess(
    src: Any, cfg: PreprocessConfig | None = None, *, reduce_for: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """load_image + make_views. -> (global uint8 [224,224,3], canvas uint8 [448,448,3])."""
    cfg = cfg or PreprocessConfig()
    img = load_image(src, max_pixels=cfg.max_pixels, reduce_for=reduce_for, background=cfg.pad_rgb)
    return make_views(img, cfg)


# --- host-side reference of the graph's tiler ---------------------------------------------------------
def normalise(views: np.ndarray, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """uint8 HWC [H,W,3] or NHWC [N,H,W,3] -> float32 NCHW: (float32(x) / 255 - mean) / std.

    Every step in float32, in this order: bit-identical to both reference paths (torchvision's ToTensor +
    Normalize, and HF's float64 rescale cast to float32 + normalise; equal for all 256 uint8 values).
    """
    cfg = cfg or PreprocessConfig()
    a = np.asarray(views)
    if a.dtype != np.uint8 or a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise InputTypeError(f"normalise takes uint8 [H,W,3] or [N,H,W,3], got {a.dtype} {a.shape}")
    if a.ndim == 3:
        a = a[None]
    x = a.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def tile(canvas: np.ndarray) -> np.ndarray:
    """Canvas [3, 2T, 2T] (or [N, 3, 2T, 2T]) -> tiles [4, 3, T, T] ([N, 4, 3, T, T]) in order TL, TR, BL, BR."""
    a = np.asarray(canvas)
    if a.ndim not in (3, 4) or a.shape[-1] != a.shape[-2] or a.shape[-1] % 2:
        raise InputTypeError(f"tile takes a square even-sized canvas [3,S,S] or [N,3,S,S], got {a.shape}")
    t = a.shape[-1] // 2
    parts = [a[..., :t, :t], a[..., :t, t:], a[..., t:, :t], a[..., t:, t:]]
    return np.stack(parts, axis=-4)


def model_inputs(
    global_u8: np.ndarray, canvas_u8: np.ndarray, cfg: PreprocessConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 views -> (global_view f32 [N,3,G,G], tiles f32 [N,4,3,T,T]): what the reference model receives."""
    g = normalise(global_u8, cfg)
    c = normalise(canvas_u8, cfg)
    return g, tile(c)
