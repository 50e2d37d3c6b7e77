"""Building blocks of the tasks' upload declarations (``Task.example_upload`` and ``Task.bad_uploads``).

Each task declares which files its service answers and which it refuses, and with what; the contract
test (tests/test_contract.py) sends every declared case to a real server. The cases here are the ones
several tasks share: an empty upload, a content type the task does not accept, and image files.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from mlops.data.layout import IMAGE_SUFFIXES
from mlops.tasks.base import BadUpload, Upload

#: content type of each image suffix the real-data layout accepts
IMAGE_SUFFIX_TYPES = {suffix: "image/png" if suffix == ".png" else "image/jpeg" for suffix in IMAGE_SUFFIXES}


def default_max_pixels() -> int:
    """The service's default decoded-size limit (``MLOPS_MAX_IMAGE_PIXELS``) the oversized cases exceed."""
    from mlops.settings import Settings

    return int(Settings.model_fields["max_image_pixels"].default)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype.hasobject)
    return buffer.getvalue()


def empty(content_type: str) -> BadUpload:
    return BadUpload("empty", b"", content_type, 400, ("empty upload",))


def foreign_content_type(example: Upload) -> BadUpload:
    """A valid file declared as plain text: the service refuses the type before the task sees the bytes."""
    return BadUpload("content-type-text", example.data, "text/plain", 415, ("content type", "not accepted"))


def first_image_upload(raw_dir: Path) -> Upload:
    """The first photo under ``raw_dir/images/`` (the image tasks' real-data layout) as a client would send it."""
    photos = sorted(p for p in (raw_dir / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIX_TYPES)
    if not photos:
        raise FileNotFoundError(f"no PNG or JPEG under {raw_dir / 'images'}")
    return Upload(photos[0].read_bytes(), IMAGE_SUFFIX_TYPES[photos[0].suffix.lower()], photos[0].name)


def oversized_png() -> bytes:
    """A real (1-bit, so small) PNG with more pixels than the service's default decoded-size limit."""
    from PIL import Image

    side = math.isqrt(default_max_pixels()) + 1
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def many_scan_jpeg(scans: int = 150) -> bytes:
    """A small progressive JPEG whose last scan is repeated until it holds ``scans`` scans: a valid file that a
    progressive decoder walks once per scan."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (64, 48), 128).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    present = data.count(b"\xff\xda")
    return data[:end] + data[last:end] * (scans - present) + data[end:]


def bad_image_uploads(raw_dir: Path) -> list[BadUpload]:
    """What a PNG/JPEG task's service refuses (``mlops.inference.images.decode_image`` and the service's checks)."""
    example = first_image_upload(raw_dir)
    return [
        empty(example.content_type),
        foreign_content_type(example),
        BadUpload("text-as-png", b"hello, I am text", "image/png", 415, ("not a PNG or JPEG",)),
        BadUpload("corrupt-png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "image/png", 422, ("corrupt",)),
        BadUpload(
            "truncated",
            example.data[: len(example.data) // 2],
            example.content_type,
            422,
            ("corrupt", "cannot be decoded"),
        ),
        BadUpload("too-many-pixels", oversized_png(), "image/png", 413, ("pixels", "the limit is")),
        BadUpload("too-many-scans", many_scan_jpeg(), "image/jpeg", 413, ("scans", "the limit is")),
    ]
