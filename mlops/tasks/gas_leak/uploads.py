"""gas_leak's upload declarations: a recorded sequence as .npy, and the frame stacks its service refuses."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mlops.tasks.base import BadUpload, Upload
from mlops.tasks.gas_leak.inference import MAX_FRAMES
from mlops.tasks.gas_leak.layout import SEQUENCES, sequence_files
from mlops.tasks.upload_cases import empty, foreign_content_type, npy_bytes


def _first_sequence(raw_dir: Path) -> Path:
    sequences = sequence_files(raw_dir)
    if not sequences:
        raise FileNotFoundError(f"no sequence under {raw_dir / SEQUENCES}")
    return sequences[0]


def example_upload(raw_dir: Path) -> Upload:
    path = _first_sequence(raw_dir)
    return Upload(path.read_bytes(), "application/x-npy", path.name)


def _npz(compressed: bool = True, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def bad_uploads(raw_dir: Path) -> list[BadUpload]:
    example = example_upload(raw_dir)
    stack = np.load(_first_sequence(raw_dir), allow_pickle=False).astype(np.float32)
    _, height, width = stack.shape
    nan, inf = stack.copy(), stack.copy()
    nan[0, 0, 0], inf[-1, -1, -1] = np.nan, np.inf
    npy = "application/x-npy"
    return [
        empty(npy),
        foreign_content_type(example),
        BadUpload("not-an-array", b"this is not an array at all", npy, 415, ("not a .npy or .npz",)),
        BadUpload("corrupt-npy", b"\x93NUMPY garbage after the magic", npy, 422, (".npy format version",)),
        BadUpload("corrupt-zip", b"PK\x03\x04 broken zip", "application/zip", 422, ("corrupt .npz",)),
        BadUpload("rank-2", npy_bytes(stack[0]), npy, 422, ("rank 2", f"(frames, {height}, {width})")),
        BadUpload("rank-4", npy_bytes(stack[None]), npy, 422, ("rank 4",)),
        BadUpload("frame-size", npy_bytes(stack[:, :, :-1]), npy, 422, ("has shape", f"{height}, {width}")),
        BadUpload("one-frame", npy_bytes(stack[:1]), npy, 422, ("has shape (1,",)),
        BadUpload("int-dtype", npy_bytes((stack * 1000).astype(np.int32)), npy, 422, ("dtype int32", "float")),
        BadUpload("nan", npy_bytes(nan), npy, 422, ("NaN",)),
        BadUpload("inf", npy_bytes(inf), npy, 422, ("infinite",)),
        # Finite as float64, infinite as the float32 the model computes in.
        BadUpload("float32-overflow", npy_bytes(stack.astype(np.float64) * 1e300), npy, 422, ("infinite",)),
        BadUpload("huge-intensities", npy_bytes(np.full_like(stack, 3e38)), npy, 422, ("intensities beyond",)),
        BadUpload("pickled-objects", npy_bytes(np.array([{"a": 1}], dtype=object)), npy, 422, ("no objects",)),
        BadUpload(
            "too-many-frames",
            _npz(frames=np.zeros((MAX_FRAMES + 1, height, width), np.float32)),
            "application/zip",
            413,
            ("too large",),
        ),
        BadUpload("npz-unnamed-arrays", _npz(False, a=stack, b=stack), "application/zip", 422, ("'frames'",)),
    ]
