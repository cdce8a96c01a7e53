"""Decoding any image input into 8-bit RGB (PIL), safely: the first half of sdk.preprocess's pipeline.

Paths, bytes, file objects, PIL images and numpy arrays; the pixel count checked from the header before any
pixel is decoded (decompression bombs); EXIF orientation applied; alpha composited onto the pad colour;
16-bit and float images scaled, not clipped; an optional reduced-DCT JPEG decode (`reduce_for`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from sdk.errors import ImageDecodeError, ImageTooLargeError, InputTypeError

DEFAULT_MAX_PIXELS = 64_000_000


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
    background: tuple[int, int, int] | None = None,
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
    if background is None:  # the CLIP pad colour (sdk.preprocess owns the colours; imported here, not at the top)
        from sdk.preprocess import CLIP_PAD_RGB

        background = CLIP_PAD_RGB
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
