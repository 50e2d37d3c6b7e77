"""ttubule's upload declarations: two slices of a volume as multi-page TIFF, and the stacks its service refuses."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from mlops.tasks.base import BadUpload, Upload
from mlops.tasks.ttubule.layout import IMAGE_FILE
from mlops.tasks.upload_cases import default_max_pixels, empty, foreign_content_type, npy_bytes


def _first_volume(raw_dir: Path) -> np.ndarray:
    import tifffile

    images = sorted(raw_dir.glob(f"*/{IMAGE_FILE}"))
    if not images:
        raise FileNotFoundError(f"no <volume>/{IMAGE_FILE} under {raw_dir}")
    return tifffile.imread(images[0])


def _tiff(array: np.ndarray, photometric: str = "minisblack", compression: str | None = None) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric=photometric, compression=compression)
    return buffer.getvalue()


def _npy_header_only(shape: tuple[int, ...]) -> bytes:
    """An .npy header declaring ``shape`` (uint8) without the data: a decompression bomb's announcement."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _tiff_bomb(compression: str, inflated: int = 64 * 1024 * 1024) -> bytes:
    """A 64x64 one-page TIFF whose only strip inflates to ``inflated`` bytes (64 times what an upload may hold):
    the page's declared shape is harmless, the strip is not."""
    import lzma
    import struct
    import zlib

    import tifffile

    page = _tiff(np.zeros((64, 64), np.uint8), compression=compression)
    zeros = b"\0" * inflated
    bomb = zlib.compress(zeros, 9) if compression == "zlib" else lzma.compress(zeros)
    out = bytearray(page) + bomb
    with tifffile.TiffFile(io.BytesIO(page)) as tif:  # point the strip's offset and byte count at the bomb
        tags = tif.pages[0].tags
        for name, value in (("StripOffsets", len(page)), ("StripByteCounts", len(bomb))):
            tag = tags[name]
            struct.pack_into({3: "<H", 4: "<I", 16: "<Q"}[int(tag.dtype)], out, tag.valueoffset, value)
    return bytes(out)


def _tiff_marked(array: np.ndarray, compression: int) -> bytes:
    """An uncompressed TIFF whose Compression tag says ``compression`` (tifffile cannot write LZW here)."""
    import struct

    import tifffile

    out = bytearray(_tiff(array))
    with tifffile.TiffFile(io.BytesIO(bytes(out))) as tif:
        for page in tif.pages:
            struct.pack_into("<H", out, page.tags["Compression"].valueoffset, compression)
    return bytes(out)


def example_upload(raw_dir: Path) -> Upload:
    return Upload(_tiff(_first_volume(raw_dir)[:2]), "image/tiff", "slices.tif")


def bad_uploads(raw_dir: Path) -> list[BadUpload]:
    example = example_upload(raw_dir)
    volume = _first_volume(raw_dir)[:2]
    side = math.isqrt(default_max_pixels()) + 1
    npy, tiff = "application/x-npy", "image/tiff"
    return [
        empty(npy),
        foreign_content_type(example),
        BadUpload("gif", b"GIF89a....", "application/octet-stream", 415, ("neither a TIFF nor a .npy",)),
        BadUpload("npy-declared-tiff", npy_bytes(volume[0]), tiff, 415, ("declared image/tiff", "npy")),
        BadUpload("corrupt-tiff", b"II*\x00" + b"\x00" * 40, tiff, 422, ("unreadable tiff",)),
        BadUpload("float-dtype", npy_bytes(volume.astype(np.float32)), npy, 422, ("dtype float32", "uint8")),
        BadUpload("rank-4", npy_bytes(volume[None]), npy, 422, ("rank 4",)),
        BadUpload("no-slices", npy_bytes(volume[:0]), npy, 422, ("no slice",)),
        BadUpload("too-small", npy_bytes(volume[0, :8, :8]), npy, 422, ("8x8", "too small")),
        BadUpload("colour-tiff", _tiff(np.stack([volume[0]] * 3, axis=-1), "rgb"), tiff, 422, ("colour TIFF",)),
        # The header announces 2**30 voxels; refused from the header, before anything is read or allocated.
        BadUpload("too-many-voxels", _npy_header_only((64, 4096, 4096)), npy, 413, ("values", "the limit is")),
        # Strips that inflate far beyond their page: refused while inflating, capped at the page's size.
        BadUpload("deflate-bomb-tiff", _tiff_bomb("zlib"), tiff, 413, ("deflate strip", "inflates beyond")),
        BadUpload("lzma-bomb-tiff", _tiff_bomb("lzma"), tiff, 413, ("LZMA strip", "inflates beyond")),
        # A compression whose inflated size cannot be bounded while decoding: refused, naming what to use.
        BadUpload("lzw-tiff", _tiff_marked(volume, compression=5), tiff, 415, ("LZW", "deflate")),
        # A real (compressed, so small) TIFF slice with more pixels than the service's default limit.
        BadUpload(
            "too-many-pixels-tiff",
            _tiff(np.zeros((side, side), np.uint8), compression="zlib"),
            tiff,
            413,
            ("values", "the limit is"),
        ),
    ]
