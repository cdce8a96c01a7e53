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

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from sdk.errors import ConfigError, InputTypeError

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # DINOv2 / ViT backbones
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def pad_colour(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The pad colour the reference derives from a mean: `int(c * 255)` (truncates: CLIP -> (122, 116, 104))."""
    return tuple(int(c * 255) for c in mean)  # type: ignore[return-value]


CLIP_PAD_RGB: tuple[int, int, int] = pad_colour(CLIP_MEAN)
IMAGENET_PAD_RGB: tuple[int, int, int] = pad_colour(IMAGENET_MEAN)
from sdk.decode import DEFAULT_MAX_PIXELS, _to_rgb, load_image  # noqa: E402,F401  (decoding lives there)

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
