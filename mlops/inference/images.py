"""Decoding of uploaded images with the checks a web application firewall would make."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlops.inference.base import BadInput
from mlops.inference.colormap import inferno_rgb
from mlops.settings import MAX_IMAGE_PIXELS

# Magic bytes of the formats we accept; the declared content type must agree with them.
_MAGIC = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
IMAGE_TYPES = ("image/png", "image/jpeg")
#: Scans a JPEG may hold. A progressive decoder re-walks the whole image once per scan, so a small file of
#: thousands of tiny scans costs minutes (measured: a 132 KB one, 43 s); encoders write at most about a dozen, and
#: libjpeg-turbo's own advice for untrusted files is a scan limit.
MAX_JPEG_SCANS = 100


def sniff_image_type(data: bytes) -> str | None:
    for magic, kind in _MAGIC.items():
        if data.startswith(magic):
            return kind
    return None


def jpeg_scan_count(data: bytes) -> int:
    """Start-of-scan segments of a JPEG, found by walking its segments (entropy-coded data is skipped to the next
    marker; byte stuffing, fill bytes and restart markers are not segments)."""
    scans, i, end = 0, 2, len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            i = data.find(b"\xff", i)  # entropy-coded data of the last scan: jump to the next 0xFF
            if i < 0:
                break
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker == 0x00 or 0xD0 <= marker <= 0xD7:  # stuffed 0xFF inside scan data, or a restart marker
            i += 2
        elif marker == 0xD9:  # end of image
            break
        else:
            scans += marker == 0xDA
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return scans


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode PNG/JPEG bytes into an RGB image; BadInput (4xx) for empty, foreign, huge or corrupt files."""
    if not data:
        raise BadInput("empty upload: send a PNG or JPEG photo", status=400)
    kind = sniff_image_type(data)
    if kind is None:
        raise BadInput("not a PNG or JPEG image (checked by its first bytes): send a photo", status=415)
    if kind == "image/jpeg" and (scans := jpeg_scan_count(data)) > MAX_JPEG_SCANS:
        raise BadInput(f"the JPEG holds {scans} scans; the limit is {MAX_JPEG_SCANS}: re-save it", status=413)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise BadInput(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
                    status=413,
                )
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")  # (converting RGB to RGB is a copy)
    except BadInput:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"corrupt {kind} image, cannot be decoded ({exc}); re-export the photo", 422) from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - PIL's own guard
        raise BadInput(f"image too large to decode safely: {exc}", status=413) from exc


def to_gray_input(img: Image.Image, width: int, height: int) -> np.ndarray:
    """The models' preprocessing: grayscale, bilinear resize, scale to [0, 1] (float32, H x W)."""
    gray = img.convert("L").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.float32) / 255.0


#: zlib level of the heat-map PNG: 1 is the fastest; at the model's resolution (64x64) a higher level saves a few
#: hundred bytes for several times the encoding time.
PNG_COMPRESS_LEVEL = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def rgb_png(pixels: np.ndarray, level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """A PNG of (H, W, 3) uint8 RGB pixels: 8-bit truecolour, no filter, one zlib stream at ``level``.

    Written directly (signature, IHDR, IDAT, IEND): at 64x64 PIL's encoder spent most of its 0.5 ms in its Python
    plumbing, this takes a fraction of it. Any PNG reader gives back the same pixels."""
    height, width, channels = pixels.shape
    if channels != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    rows = np.empty((height, 1 + 3 * width), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "none" on every scanline
    rows[:, 1:] = pixels.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no interlace
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)),
            _png_chunk(b"IEND", b""),
        )
    )


def heatmap_overlay(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: a [0,1] heat map in matplotlib's "inferno" colours blended over a [0,1] grayscale image
    (55 % image, 45 % heat), pixel for pixel what the matplotlib version of this function drew."""
    rgb_heat = inferno_rgb(np.clip(heat, 0, 1))
    base = np.clip(gray, 0, 1)[..., None]  # broadcast over the 3 channels: the same sums as repeating it
    blend = (0.55 * base + 0.45 * rgb_heat) * 255
    return blend.astype(np.uint8)


def heatmap_overlay_png(gray: np.ndarray, heat: np.ndarray, scale: int = 1) -> bytes:
    """PNG of a [0,1] heat map drawn over a [0,1] grayscale image, at the model input's resolution (``scale``
    upscales it bilinearly; clients scale the image for display themselves), encoded with the fastest zlib level
    (:func:`rgb_png`).
    No matplotlib: the colours come from a lookup table (``mlops.inference.colormap``)."""
    pixels = heatmap_overlay(gray, heat)
    if scale != 1:
        img = Image.fromarray(pixels).resize(
            (pixels.shape[1] * scale, pixels.shape[0] * scale), Image.Resampling.BILINEAR
        )
        pixels = np.asarray(img)
    return rgb_png(pixels)


def warm_up() -> None:
    """Load what decoding and encoding need (PIL's PNG and JPEG plugins, zlib) now, at model load, so that the first
    request does not pay for imports."""
    gray = np.zeros((8, 8), dtype=np.float32)
    png = heatmap_overlay_png(gray, gray)
    decode_image(png)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    decode_image(buf.getvalue())
