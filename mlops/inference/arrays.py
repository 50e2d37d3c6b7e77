"""Uploaded .npy and .npz arrays read within a budget: sizes checked from headers before anything is allocated
or inflated.

``np.load`` trusts a .npy header: one that declares a shape of 10^12 values on a 1 KB upload makes numpy allocate
the whole array before it finds the data missing (a MemoryError, a 500). An .npz is a zip: members can be
anything, encrypted, compressed with methods numpy cannot read, or inflate far beyond what their directory entry
declares. Here the header and the zip directory are read first and every declared size is checked against the
budget and against the bytes actually present; a member is inflated only up to its declared size.
"""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np

from mlops.inference.base import BadInput

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
#: Members an uploaded .npz may hold (each is one array; what a task reads is one or two).
MAX_NPZ_MEMBERS = 8
_READABLE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a .npy file (what a client uploads; the predictors' warm-ups send one)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def read_npy(data: bytes, max_values: int, what: str) -> np.ndarray:
    """The array in ``data`` (a .npy file) if its header declares at most ``max_values`` values of a plain numeric
    or boolean dtype and the file holds exactly the bytes the header declares; BadInput (413/422) otherwise."""
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buffer)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buffer)
        else:
            raise BadInput(f"{what}: .npy format version {version} is not read here; save with numpy.save", 422)
    except BadInput:
        raise
    except (ValueError, SyntaxError, EOFError) as exc:
        raise BadInput(f"{what}: not a readable .npy header ({exc})", status=422) from exc
    if dtype.hasobject or dtype.kind not in "biuf":
        raise BadInput(f"{what}: dtype {dtype} is not a plain number type (no objects, strings or records)", 422)
    count = math.prod(shape)
    if count > max_values:
        raise BadInput(f"{what}: the header declares shape {shape} ({count} values); the limit is {max_values}", 413)
    body = len(data) - buffer.tell()
    if count * dtype.itemsize != body:
        raise BadInput(
            f"{what}: the header declares {count * dtype.itemsize} bytes of data (shape {shape}, {dtype}), the "
            f"file holds {body}: truncated or a lying header",
            status=422,
        )
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadInput(f"{what}: unreadable .npy ({exc})", status=422) from exc


def read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, status: int = 422) -> bytes:
    """One member's bytes, inflated never beyond its declared size; BadInput (``status``) for an encrypted member,
    a compression method other than stored/deflate, an unreadable stream or a member that inflates to another
    size than its directory entry declares. Callers bound the declared sizes first."""
    if info.flag_bits & 0x1:
        raise BadInput(f"{what}: member {info.filename!r} is encrypted; re-zip it without a password", status)
    if info.compress_type not in _READABLE_METHODS:
        raise BadInput(
            f"{what}: member {info.filename!r} uses compression method {info.compress_type}; re-zip it with the "
            "default (deflate) method",
            status,
        )
    try:
        with archive.open(info) as member:
            raw = member.read(info.file_size + 1)  # never more than declared (+1 to notice a lie)
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, NotImplementedError, ValueError) as exc:
        raise BadInput(f"{what}: member {info.filename!r} cannot be read ({exc})", status) from exc
    if len(raw) != info.file_size:
        raise BadInput(f"{what}: member {info.filename!r} inflates to another size than declared", status)
    return raw


def read_npz(data: bytes, max_values: int, what: str) -> dict[str, np.ndarray]:
    """Member name (without ``.npy``) -> array of an uploaded .npz, within ``max_values`` values in all."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise BadInput(f"{what}: corrupt .npz (zip) archive ({exc})", status=422) from exc
    with archive:
        members = archive.infolist()
        if len(members) > MAX_NPZ_MEMBERS:
            raise BadInput(f"{what}: the .npz holds {len(members)} members; at most {MAX_NPZ_MEMBERS} are read", 413)
        budget = 8 * max_values + 4096 * len(members)  # float64 at the value limit, plus each .npy header
        if sum(info.file_size for info in members) > budget:
            raise BadInput(f"{what}: the .npz declares more than {budget} bytes unpacked ({max_values} values)", 413)
        arrays: dict[str, np.ndarray] = {}
        for info in members:
            if not info.filename.endswith(".npy") or info.is_dir():
                raise BadInput(f"{what}: .npz member {info.filename!r} is not a .npy array", status=422)
            raw = read_zip_member(archive, info, f"{what} (.npz)")
            arrays[info.filename.removesuffix(".npy")] = read_npy(raw, max_values, f"{what} ({info.filename})")
            max_values -= arrays[info.filename.removesuffix(".npy")].size
    return arrays
