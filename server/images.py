"""Checking and re-encoding uploaded images with Pillow."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from server.errors import TooLarge, UnsupportedMediaType

# MPO is the multi-picture JPEG phones save (a JPEG with extra frames): kept as a plain JPEG.
ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "GIF": "gif", "WEBP": "webp"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "gif": "gif", "webp": "webp"}


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    extension: str
    content_type: str
    width: int
    height: int


def clean_image(source: bytes | Path, *, max_pixels: int) -> CleanImage:
    """Decode `source` (bytes or a file) whatever it claims to be, refuse non-images and huge ones,
    and re-encode it.

    Re-encoding drops every piece of metadata (EXIF with GPS, comments, ICC tricks) and any bytes
    smuggled after the image data. Animated GIFs and WebPs keep only their first frame, MPOs their
    first picture. The declared size is checked before any pixel is decoded.
    """
    def open_source() -> Image.Image:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)

    too_large = TooLarge(f"The image is larger than {max_pixels // 1_000_000} megapixels.")
    try:
        with open_source() as probe:
            fmt = ALLOWED_FORMATS.get(probe.format or "")
            if fmt is None:
                raise UnsupportedMediaType("Only PNG, JPEG, GIF and WebP images can be uploaded.")
            width, height = probe.size
            if width * height > max_pixels:
                raise too_large
            probe.verify()
        with open_source() as image:
            image.load()
            image = _normalise_mode(image, fmt)
            out = io.BytesIO()
            save_options = {"quality": 88, "optimize": True} if fmt == "jpeg" else {}
            image.save(out, format=fmt.upper(), **save_options)
    except Image.DecompressionBombError:  # declared far larger than any limit (Pillow's own check)
        raise too_large from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UnsupportedMediaType("The file is not a readable PNG, JPEG, GIF or WebP image.") from None
    return CleanImage(out.getvalue(), EXTENSIONS[fmt], CONTENT_TYPES[fmt], width, height)


def _normalise_mode(image: Image.Image, fmt: str) -> Image.Image:
    if fmt == "jpeg" and image.mode not in ("RGB", "L"):
        return image.convert("RGB")
    if fmt in ("png", "webp") and image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        return image.convert("RGBA")
    return image
