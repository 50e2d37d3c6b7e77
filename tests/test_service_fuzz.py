"""The service under hostile input and a property-based client, through one real uvicorn server (issue 19).

One module fixture trains every registered task's tiny champion with test_contract's stage functions (one epoch)
and serves them all from one real ``mlops serve`` process with small limits, a rate limit no test reaches, a webhook
secret, and its member service (keys, request log, contributions) on a fresh PostgreSQL database. Two tests use it:

``test_hostile_corpus_*``: a corpus generated here (no binary blob is committed) is sent to every task's predict
route and to every other operation the service's own ``/openapi.json`` lists, plus raw HTTP that client libraries
would never write. It must draw no status >= 500 and no dropped connection, while a thread polls ``/healthz`` (each
answer within ``HEALTH_SECONDS``) and samples the server's memory; the growth of its resident set from before the
corpus to after it must stay under ``RSS_GROWTH_BOUND_MB``, and the server must log no traceback meanwhile.

``test_openapi_schema_client_*``: schemathesis reads the running service's OpenAPI schema and generates requests
for every operation, positive and negative, with a real admin key and realistic path parameters (the real task
names, so predict is reached); the only check is that no answer is a 5xx.

The last tests keep what the corpus found (each once a 500 or a lost request-log row) as fast in-process checks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import itertools
import json
import math
import os
import select
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error

from mlops.tasks import get_task, task_names
from tests.conftest import env_for, pg_database, process_log, start_service, stop_process, write_params
from tests.test_contract import contract_params, prepare_champions

pytestmark = pytest.mark.integration

TASKS = task_names()
#: Limits the server runs with: small, so the largest hostile body is cheap to send, and what bounds its memory.
UPLOAD_LIMIT = 512 * 1024  # MLOPS_MAX_UPLOAD_BYTES
PIXEL_LIMIT = 1024 * 1024  # MLOPS_MAX_IMAGE_PIXELS
REQUEST_LIMIT = 64 * 1024  # MLOPS_MAX_REQUEST_BYTES (the service's default, stated for the probes that exceed it)
WEBHOOK_SECRET = "fuzz-webhook-secret"
#: Requests in flight at once: fewer than a task lane admits (MLOPS_QUEUE_PER_TASK, default 4), so a 503 "busy"
#: is never the expected answer here: every 5xx is a failure.
CLIENT_THREADS = 3
#: Longest a /healthz answer may take while the corpus runs.
HEALTH_SECONDS = 3.0
#: Largest growth of the server's resident memory (VmRSS of the process and its children) from before the corpus to
#: after it. Why there is a bound at all: the service's own limits cap what one request may make it hold (a body of at
#: most UPLOAD_LIMIT + multipart framing, or REQUEST_LIMIT; an image of at most PIXEL_LIMIT pixels; arrays, TIFF
#: pages and archive members within the tasks' declared budgets, checked from headers before anything is allocated
#: or inflated), at most CLIENT_THREADS requests are in flight, and what a finished request held is freed; what
#: legitimately stays is allocator caches and per-thread arenas (measured: about 50 MB). What 300 MB catches: a
#: decoder that allocates by what a file declares rather than what it holds (the corpus declares up to 2^62 values,
#: 65535^2 pixels, 4 GB zip members, a 10^30-byte body) or that keeps what it inflated. What it cannot catch: a leak
#: of a few KB per request (the corpus sends about 30 MB in all; a slow leak needs a soak test, not this one).
RSS_GROWTH_BOUND_MB = 300


# --- the served service ---------------------------------------------------------------------------------------------


def fuzz_params() -> dict:
    """test_contract's params (tiny data, gates any model passes) with a single epoch: only the serving matters."""
    params = contract_params()
    for name in TASKS:
        params[name]["train"].update(epochs=1, patience=1)
    return params


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Every task's champion served by one real `mlops serve` process (its output in ``serve-fuzz.log``), its member
    service (keys, request log, contributions) on a fresh PostgreSQL database, as in production: PostgreSQL refuses
    what SQLite stores (a NUL character, an over-long string)."""

    from mlops.members.keys import KeyStore
    from mlops.params import load_params

    root = tmp_path_factory.mktemp("fuzz")
    write_params(root, fuzz_params())
    params = load_params(root / "params.yaml")
    home, champions = prepare_champions(root, params, TASKS)
    raws = {name: champion["raw"] for name, champion in champions.items()}
    (root / "data.dvc").write_text("outs:\n- path: data/raw\n")  # where an accepted contribution is written
    env = env_for(home)
    for key in ("MLOPS_SERVED_ALIAS", "MLOPS_REQUIRE_API_KEY", "MLOPS_REDIS_URL"):
        env.pop(key, None)
    env.update(
        MLOPS_ALIAS_POLL_SECONDS="0",  # nothing moves the aliases; the signed webhook probes refresh the store
        MLOPS_RATE_LIMIT_PER_MINUTE="10000000",  # the corpus is about inputs, not about limits (other tests')
        MLOPS_RATE_LIMIT_BURST="1000000",
        MLOPS_AUTH_FAILURES_PER_MINUTE="10000000",  # so that every bogus key reaches the key check, not a 429
        MLOPS_AUTH_FAILURES_BURST="1000000",
        MLOPS_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT),
        MLOPS_MAX_REQUEST_BYTES=str(REQUEST_LIMIT),
        MLOPS_MAX_IMAGE_PIXELS=str(PIXEL_LIMIT),
        MLOPS_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    with pg_database("mlops_fuzz") as db_url:
        env["MLOPS_SERVICE_DB_URI"] = db_url
        keys = KeyStore(db_url)
        admin, member = (keys.issue(f"fuzz {role}", role, "tests")[1] for role in ("admin", "member"))
        keys.engine.dispose()
        log = home / "serve-fuzz.log"
        proc, base = start_service(root, env, log=log)
        try:
            yield {"base": base, "proc": proc, "admin": admin, "member": member, "raws": raws, "log": log}
        finally:
            stop_process(proc)


# --- generated files ------------------------------------------------------------------------------------------------


def png(array: np.ndarray | Image.Image, **save: Any) -> bytes:
    img = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


def jpeg(array: np.ndarray | Image.Image, **save: Any) -> bytes:
    img = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **save)
    return buf.getvalue()


def tiff(array: np.ndarray, **kw: Any) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kw)
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_header(header: str, body: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    """A .npy file whose header dict is ``header`` as written (any text, padded as numpy pads it)."""
    text = header.encode("latin-1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY" + version + len(text).to_bytes(2, "little") + text + body


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    import zlib

    crc = zlib.crc32(kind + data) if crc is None else crc
    return len(data).to_bytes(4, "big") + kind + data + crc.to_bytes(4, "big")


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (8-bit gray) over ``idat`` (default: nothing)."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    chunks = png_chunk(b"IHDR", ihdr) + (png_chunk(b"IDAT", idat) if idat else b"") + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def jpeg_declaring(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a baseline JPEG) with its frame header patched to declare ``width`` x ``height``."""
    out = bytearray(data)
    sof = out.find(b"\xff\xc0")
    out[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(out)


def tiff_patched(data: bytes, offset_of_first_ifd: int | None = None, next_ifd_loop: bool = False) -> bytes:
    """A little-endian classic TIFF with its first-IFD offset replaced, or its first IFD pointing to itself."""
    out = bytearray(data)
    first = int.from_bytes(out[4:8], "little")
    if offset_of_first_ifd is not None:
        out[4:8] = offset_of_first_ifd.to_bytes(4, "little")
    if next_ifd_loop:
        count = int.from_bytes(out[first : first + 2], "little")
        at = first + 2 + 12 * count
        out[at : at + 4] = first.to_bytes(4, "little")
    return bytes(out)


def tiff_declaring(width: int, height: int) -> bytes:
    """A one-page 8-bit TIFF whose tags declare ``width`` x ``height`` over a 16-byte strip."""
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),  # StripOffsets: right after the IFD
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd = len(entries).to_bytes(2, "little")
    for tag, kind, count, value in entries:
        ifd += tag.to_bytes(2, "little") + kind.to_bytes(2, "little") + count.to_bytes(4, "little")
        ifd += value.to_bytes(4, "little") if kind == 4 else value.to_bytes(2, "little") + b"\0\0"
    return b"II*\x00" + (8).to_bytes(4, "little") + ifd + b"\0\0\0\0" + b"\x80" * 16


def zip_member_lying(data: bytes, declared: int) -> bytes:
    """``data`` (a one-member zip) with the central directory's uncompressed size of the member set to ``declared``."""
    out = bytearray(data)
    central = out.rfind(b"PK\x01\x02")
    out[central + 24 : central + 28] = declared.to_bytes(4, "little")
    return bytes(out)


def openpose(n_frames: int, people: int = 1, value: Any = 100.0) -> list[dict]:
    return [{"people": [{"pose_keypoints_2d": [value] * 75} for _ in range(people)]} for _ in range(n_frames)]


Blob = tuple[str, bytes, str]  # (name, bytes, the content type it is sent as)


def magic_blobs(noise: bytes) -> list[Blob]:
    """A format's first bytes and nothing of the format after them."""
    magics = {
        "png": (b"\x89PNG\r\n\x1a\n", "image/png"),
        "jpeg": (b"\xff\xd8\xff\xe0", "image/jpeg"),
        "tiff-le": (b"II*\x00", "image/tiff"),
        "tiff-be": (b"MM\x00*", "image/tiff"),
        "bigtiff": (b"II+\x00\x08\x00\x00\x00", "image/tiff"),
        "npy": (b"\x93NUMPY\x01\x00", "application/x-npy"),
        "npy-v3": (b"\x93NUMPY\x03\x00", "application/x-npy"),
        "zip": (b"PK\x03\x04", "application/zip"),
        "zip-empty-end": (b"PK\x05\x06", "application/zip"),
        "gif": (b"GIF89a", "image/gif"),
        "pdf": (b"%PDF-1.7", "application/pdf"),
        "elf": (b"\x7fELF", "application/octet-stream"),
        "gzip": (b"\x1f\x8b\x08", "application/gzip"),
        "json-array": (b"[", "application/json"),
        "json-object": (b"{", "application/json"),
    }
    return [(f"magic-{name}", magic + noise[:512], ctype) for name, (magic, ctype) in magics.items()]


def truncations(name: str, data: bytes, ctype: str, cuts: tuple[int, ...]) -> list[Blob]:
    return [(f"{name}-cut-{k}", data[:k], ctype) for k in cuts]


def image_blobs(rng: np.random.Generator) -> list[Blob]:
    photo = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    good_png, good_jpeg = png(photo), jpeg(photo)
    bad_crc = bytearray(good_png)
    bad_crc[29:33] = b"\0\0\0\0"  # the IHDR chunk's CRC
    import zlib

    ztxt = png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"a" * (4 * 1024 * 1024)))  # text inflating to 4 MB
    with_ztxt = good_png[:33] + ztxt + good_png[33:]
    corrupt_jpeg = bytearray(good_jpeg)
    corrupt_jpeg[len(corrupt_jpeg) // 2 : len(corrupt_jpeg) // 2 + 64] = b"\xff" * 64
    side = math.isqrt(PIXEL_LIMIT) + 1
    cmyk = Image.fromarray(photo).convert("CMYK")
    frames = [Image.fromarray(photo), Image.fromarray(255 - photo)]
    apng = io.BytesIO()
    frames[0].save(apng, format="PNG", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation: rotated
    return [
        *truncations("png", good_png, "image/png", (8, 16, 33, len(good_png) // 2, len(good_png) - 12)),
        *truncations("jpeg", good_jpeg, "image/jpeg", (3, 20, len(good_jpeg) // 2, len(good_jpeg) - 2)),
        ("png-bad-crc", bytes(bad_crc), "image/png"),
        ("png-ztxt-4mb", with_ztxt, "image/png"),
        ("png-trailing-garbage", good_png + b"\0garbage" * 100, "image/png"),
        ("png-declares-0x0", png_declaring(0, 0), "image/png"),
        ("png-declares-2^31", png_declaring(2**31 - 1, 2**31 - 1), "image/png"),
        ("png-declares-65535^2-no-data", png_declaring(65535, 65535), "image/png"),
        ("png-over-pixel-limit", png(Image.new("1", (side, side))), "image/png"),
        ("png-1x1", png(photo[:1, :1]), "image/png"),
        ("png-1xN", png(rng.integers(0, 256, (1, 4000), dtype=np.uint8)), "image/png"),
        ("png-Nx1", png(rng.integers(0, 256, (4000, 1), dtype=np.uint8)), "image/png"),
        ("png-16bit-gray", png(Image.fromarray(rng.integers(0, 65535, (40, 50), dtype=np.uint16))), "image/png"),
        ("png-rgba", png(Image.fromarray(photo).convert("RGBA")), "image/png"),
        ("png-la", png(Image.fromarray(photo).convert("LA")), "image/png"),
        ("png-palette-transparent", png(Image.fromarray(photo).convert("P"), transparency=0), "image/png"),
        ("png-1bit", png(Image.fromarray(photo).convert("1")), "image/png"),
        ("png-animated", apng.getvalue(), "image/png"),
        ("jpeg-corrupt-middle", bytes(corrupt_jpeg), "image/jpeg"),
        ("jpeg-declares-0-height", jpeg_declaring(good_jpeg, 64, 0), "image/jpeg"),
        ("jpeg-declares-65535^2", jpeg_declaring(good_jpeg, 65535, 65535), "image/jpeg"),
        ("jpeg-cmyk", jpeg(cmyk), "image/jpeg"),
        ("jpeg-gray", jpeg(photo[..., 0]), "image/jpeg"),
        ("jpeg-progressive", jpeg(photo, progressive=True), "image/jpeg"),
        ("jpeg-exif-rotated", jpeg(photo, exif=exif), "image/jpeg"),
        ("png-as-jpeg", good_png, "image/jpeg"),
    ]


def tiff_blobs(rng: np.random.Generator) -> list[Blob]:
    stack = rng.integers(0, 256, (2, 64, 64), dtype=np.uint8)
    good = tiff(stack, photometric="minisblack")
    many_pages = tiff(np.zeros((1025, 1, 1), np.uint8), photometric="minisblack")  # more pages than the limit
    return [
        *truncations("tiff", good, "image/tiff", (4, 8, 20, len(good) // 2, len(good) - 1)),
        ("tiff-first-ifd-beyond-eof", tiff_patched(good, offset_of_first_ifd=0xFFFFFFF0), "image/tiff"),
        ("tiff-first-ifd-at-0", tiff_patched(good, offset_of_first_ifd=0), "image/tiff"),
        ("tiff-ifd-loop", tiff_patched(good, next_ifd_loop=True), "image/tiff"),
        ("tiff-declares-60000^2", tiff_declaring(60000, 60000), "image/tiff"),
        ("tiff-declares-0x0", tiff_declaring(0, 0), "image/tiff"),
        ("tiff-float32", tiff(stack.astype(np.float32) / 255, photometric="minisblack"), "image/tiff"),
        ("tiff-float32-nan", tiff(np.full((2, 64, 64), np.nan, np.float32), photometric="minisblack"), "image/tiff"),
        ("tiff-uint16", tiff(stack.astype(np.uint16) * 257, photometric="minisblack"), "image/tiff"),
        ("tiff-int8", tiff(stack.astype(np.int8), photometric="minisblack"), "image/tiff"),
        ("tiff-bool", tiff(stack > 127, photometric="minisblack"), "image/tiff"),
        ("tiff-4d", tiff(np.stack([stack, stack]), photometric="minisblack"), "image/tiff"),
        ("tiff-1x1-pages", tiff(np.zeros((2, 1, 1), np.uint8), photometric="minisblack"), "image/tiff"),
        ("tiff-one-page", tiff(stack[0], photometric="minisblack"), "image/tiff"),
        ("tiff-bigtiff", tiff(stack, photometric="minisblack", bigtiff=True), "image/tiff"),
        ("tiff-big-endian", tiff(stack, photometric="minisblack", byteorder=">"), "image/tiff"),
        ("tiff-tiled", tiff(stack, photometric="minisblack", tile=(16, 16)), "image/tiff"),
        ("tiff-1025-pages", many_pages, "image/tiff"),
        ("tiff-as-octet-stream", good, "application/octet-stream"),
    ]


def npy_blobs(rng: np.random.Generator) -> list[Blob]:
    frames = rng.random((8, 16, 16), dtype=np.float32)
    good = npy(frames)
    nan, inf = frames.copy(), frames.copy()
    nan[0, 0, 0], inf[-1, -1, -1] = np.nan, -np.inf
    t = "application/x-npy"
    return [
        *truncations("npy", good, t, (6, 10, 60, len(good) // 2, len(good) - 1)),
        ("npy-nan", npy(nan), t),
        ("npy-inf", npy(inf), t),
        ("npy-big-endian", npy(frames.astype(">f4")), t),
        ("npy-float16", npy(frames.astype(np.float16)), t),
        ("npy-float64-1e300", npy(frames.astype(np.float64) * 1e300), t),
        ("npy-longdouble", npy(frames.astype(np.longdouble)), t),
        ("npy-complex", npy(frames.astype(np.complex64)), t),
        ("npy-bool", npy(frames > 0.5), t),
        ("npy-uint64-max", npy(np.full((8, 16, 16), np.iinfo(np.uint64).max, np.uint64)), t),
        ("npy-int8", npy((frames * 100).astype(np.int8)), t),
        ("npy-maps-28", npy((rng.random((40, 28, 28)) > 0.5).astype(np.float32)), t),
        ("npy-uint8-stack", npy(rng.integers(0, 256, (2, 64, 64), dtype=np.uint8)), t),
        ("npy-strings", npy(np.array(["a", "bb"])), t),
        ("npy-structured", npy(np.zeros(4, dtype=[("a", "<f4"), ("b", "<i2")])), t),
        ("npy-fortran", npy(np.asfortranarray(frames)), t),
        ("npy-empty", npy(np.zeros((0,), np.float32)), t),
        ("npy-no-frames", npy(np.zeros((0, 16, 16), np.float32)), t),
        ("npy-scalar", npy(np.float32(1.0)), t),
        ("npy-rank-5", npy(frames[None, None]), t),
        ("npy-header-object", npy_header("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", b"\0" * 16), t),
        ("npy-header-negative", npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4), }"), t),
        ("npy-header-2^62", npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2**62,), }"), t),
        (
            "npy-header-huge-shape",
            npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (65536, 65536, 65536), }"),
            t,
        ),
        ("npy-header-code", npy_header("{'descr': __import__('os').getcwd(), 'shape': (1,)}"), t),
        ("npy-header-not-a-dict", npy_header("[1, 2, 3]"), t),
        ("npy-header-bad-descr", npy_header("{'descr': '<q9', 'fortran_order': False, 'shape': (1,), }"), t),
        (
            "npy-header-v2",
            npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", b"\0" * 4, b"\x02\x00"),
            t,
        ),
        ("npy-header-length-lies", b"\x93NUMPY\x01\x00\xff\xff{'descr': '<f4'}", t),
        ("npy-as-octet-stream", good, "application/octet-stream"),
        ("npy-as-tiff", good, "image/tiff"),
    ]


def zip_blobs(rng: np.random.Generator) -> list[Blob]:
    frames = rng.random((8, 16, 16), dtype=np.float32)
    good = npz(frames=frames)
    member = npy(frames)
    encrypted = bytearray(zip_of({"frames.npy": member}))
    encrypted[6] |= 1
    encrypted[encrypted.rfind(b"PK\x01\x02") + 8] |= 1
    zeros = zip_of({"frames.npy": b"\0" * (64 * 1024 * 1024)})  # inflates to 64 MB (a bounded amount)
    pose = json.dumps(openpose(1)[0]).encode()
    z = "application/zip"
    return [
        *truncations("npz", good, z, (4, 30, len(good) // 2, len(good) - 22, len(good) - 1)),
        ("zip-empty", zip_of({}), z),
        ("zip-traversal", zip_of({"../../../../etc/frames.npy": member}), z),
        ("zip-absolute", zip_of({"/etc/frames.npy": member}), z),
        ("zip-directory-only", zip_of({"frames/": b""}), z),
        ("zip-nul-name", zip_of({"frames\0.npy": member}), z),
        ("zip-long-name", zip_of({"f" * 4000 + ".npy": member}), z),
        ("zip-9-members", zip_of({f"a{i}.npy": member for i in range(9)}), z),
        ("zip-bzip2", zip_of({"frames.npy": member}, zipfile.ZIP_BZIP2), z),
        ("zip-lzma", zip_of({"frames.npy": member}, zipfile.ZIP_LZMA), z),
        ("zip-encrypted-flag", bytes(encrypted), z),
        ("zip-size-lies-small", zip_member_lying(zip_of({"frames.npy": member}), 16), z),
        ("zip-size-lies-huge", zip_member_lying(zip_of({"frames.npy": member}), 2**32 - 1), z),
        ("zip-inflates-64mb", zeros, z),
        ("zip-nested", zip_of({"inner.zip": good}), z),
        ("zip-pose-traversal", zip_of({"../../v_000000000000_keypoints.json": pose}), z),
        ("zip-pose-3000-members", zip_of({f"v/v_{i:012d}_keypoints.json": b"{}" for i in range(3000)}), z),
        ("zip-pose-not-utf8", zip_of({"v/v_000000000000_keypoints.json": b"\xff\xfe\x00["}), z),
        ("npz-as-octet-stream", good, "application/octet-stream"),
    ]


def json_blobs() -> list[Blob]:
    frames = openpose(40)
    j = "application/json"

    def doc(value: Any) -> bytes:
        return json.dumps(value).encode()

    def keypoints(text: str) -> bytes:
        return b'[{"people": [{"pose_keypoints_2d": [' + ", ".join([text] * 75).encode() + b"]}]}]"

    return [
        ("json-deep-arrays", b"[" * 100_000 + b"]" * 100_000, j),
        ("json-deep-objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, j),
        ("json-long-integer", keypoints("9" * 5000), j),
        ("json-huge-exponent", keypoints("1e999999"), j),
        ("json-tiny-exponent", keypoints("1e-999999"), j),
        ("json-nan", keypoints("NaN"), j),
        ("json-infinity", keypoints("-Infinity"), j),
        ("json-big-int", keypoints(str(10**300)), j),
        ("json-strings", keypoints('"1"'), j),
        ("json-nulls", keypoints("null"), j),
        ("json-nested-numbers", keypoints("[1]"), j),
        ("json-lone-surrogate", b'[{"people": [{"pose_keypoints_2d": ["\\ud800"]}]}]', j),
        ("json-invalid-utf8", b'[{"people": "\xff\xfe"}]', j),
        ("json-utf16-bom", doc(frames).decode().encode("utf-16"), j),
        ("json-utf8-bom", b"\xef\xbb\xbf" + doc(frames), j),
        ("json-people-null", doc([{"people": None}] * 40), j),
        ("json-people-string", doc([{"people": "x"}] * 40), j),
        ("json-keypoints-object", doc([{"people": [{"pose_keypoints_2d": {"a": 1}}]}] * 40), j),
        ("json-many-people", doc(openpose(2, people=1500)), j),
        ("json-empty-frames", b"[" + b"{}," * 3000 + b"{}]", j),
        ("json-frames-only-empty-people", doc([{"people": []}] * 40), j),
        ("json-negative-zero", doc(openpose(40, value=-0.0)), j),
        ("json-empty-list", b"[]", j),
        ("json-scalar", b"1", j),
        ("json-whitespace", b" " * 1000, j),
        ("json-valid-frames", doc(frames), j),
    ]


def generic_blobs(rng: np.random.Generator) -> list[Blob]:
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return [
        ("empty", b"", "application/octet-stream"),
        ("one-byte", b"\0", "application/octet-stream"),
        ("noise", noise, "application/octet-stream"),
        ("text", "naïve text, not a file ✓".encode(), "text/plain"),
        *magic_blobs(noise),
        *image_blobs(rng),
        *tiff_blobs(rng),
        *npy_blobs(rng),
        *zip_blobs(rng),
        *json_blobs(),
    ]


#: Content types a client may declare for a valid file: accepted ones with odd spellings, and foreign ones.
ODD_CONTENT_TYPES = [
    "",
    "text/plain",
    "*/*",
    "IMAGE/PNG",
    "image/png; charset=binary",
    'application/json; x="unterminated',
    "multipart/form-data; boundary=inner",
    "application/octet-stream" + "; a=b" * 2000,
    "image/tiff;;;",
]


# --- probes ---------------------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One request of the corpus: ``kwargs`` for httpx, or ``raw`` bytes written to a socket as they are."""

    operation: str  # the OpenAPI operation aimed at ("POST /v1/models/{task}/predict"), or "-" for none
    name: str
    method: str = "GET"
    url: str = "/"
    kwargs: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    #: raw only: a body written in chunks after ``raw`` until the server answers (it may stop reading early)
    stream: bytes = b""
    #: raw only: the client leaves (half-closes) without sending the declared body; no answer is owed then
    leaves: bool = False


PREDICT = "POST /v1/models/{task}/predict"


def predict_probes(raws: dict[str, Path], blobs: list[Blob], key: str) -> list[Probe]:
    """Every blob to every task's predict route (with a valid key, so the task's own reading code runs), each
    task's example with odd content types and file names."""
    probes = []
    for task in TASKS:
        url = f"/v1/models/{task}/predict"

        def probe(name: str, data: bytes, ctype: str, filename: str = "x") -> Probe:
            kw = {"files": {"file": (filename, data, ctype)}, "headers": {"X-API-Key": key}}
            return Probe(PREDICT, f"{task}: {name}", "POST", url, kw)  # noqa: B023 (used at once)

        probes += [probe(name, data, ctype) for name, data, ctype in blobs]
        example = get_task(task).example_upload(raws[task])
        probes += [probe(f"example as {t[:40]!r}", example.data, t, example.filename) for t in ODD_CONTENT_TYPES]
        for filename in ("../../../../etc/passwd", "..\\..\\win.ini", "x" * 5000, "naïve ✓.bin", "", "a\0b"):
            probes.append(probe(f"filename {filename[:30]!r}", example.data, example.content_type, filename))
    return probes


def multipart_body(parts: list[tuple[bytes, bytes]], boundary: bytes = b"fuzzboundary", end: bool = True) -> bytes:
    """A multipart body from (part headers, part body) pairs, written by hand so that anything can be in it."""
    out = b""
    for headers, body in parts:
        out += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + body + b"\r\n"
    return out + (b"--" + boundary + b"--\r\n" if end else b"")


def multipart_probes(operation: str, url: str, file: bytes, fields: dict[str, str]) -> list[Probe]:
    """Malformed multipart to an upload route; ``fields`` are the route's form fields besides ``file``."""
    disposition = b'Content-Disposition: form-data; name="file"; filename="x.png"\r\nContent-Type: image/png'
    extra = [(f'Content-Disposition: form-data; name="{k}"'.encode(), v.encode()) for k, v in fields.items()]
    good = [(disposition, file), *extra]
    mp = "multipart/form-data; boundary=fuzzboundary"
    cases: list[tuple[str, bytes, str]] = [
        ("no-boundary-parameter", multipart_body(good), "multipart/form-data"),
        ("wrong-boundary", multipart_body(good, b"other"), mp),
        ("unterminated", multipart_body(good, end=False), mp),
        ("no-disposition", multipart_body([(b"Content-Type: image/png", file), *extra]), mp),
        ("two-files", multipart_body([(disposition, file), (disposition, file), *extra]), mp),
        ("file-as-field", multipart_body([(b'Content-Disposition: form-data; name="file"', file), *extra]), mp),
        ("2000-fields", multipart_body([*good, *[(b'Content-Disposition: form-data; name="f"', b"v")] * 2000]), mp),
        ("1100-files", multipart_body([(disposition, b"x")] * 1100), mp),
        ("long-part-header", multipart_body([(disposition + b"\r\nX-Long: " + b"a" * 100_000, file), *extra]), mp),
        ("latin1-filename", multipart_body([(disposition.replace(b"x.png", b"\xe9\xff.png"), file), *extra]), mp),
        (
            "rfc5987-filename",
            multipart_body([(disposition.replace(b'filename="x.png"', b"filename*=utf-8''%ff%fe%00"), file), *extra]),
            mp,
        ),
        ("json-body", b'{"file": "aGVsbG8="}', "application/json"),
        ("urlencoded-body", b"file=abc&label=x", "application/x-www-form-urlencoded"),
        ("no-content-type", multipart_body(good), ""),
    ]
    return [
        Probe(operation, f"multipart {name}", "POST", url, {"content": body, "headers": {"content-type": ctype}})
        for name, body, ctype in cases
    ]


def raw_head(method: str, path: str, headers: dict[str, str | bytes] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    for key, value in (headers or {}).items():
        lines.append(key.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def raw_probes(admin: str) -> list[Probe]:
    """Requests written byte by byte: what no HTTP client library would send."""
    predict = f"/v1/models/{TASKS[0]}/predict"
    key = {"X-API-Key": admin}
    mp = "multipart/form-data; boundary=fuzzboundary"

    def post(name: str, headers: dict[str, str | bytes], **kw: Any) -> Probe:
        return Probe(PREDICT, name, raw=raw_head("POST", predict, {**key, **headers}), **kw)

    chunked_junk = b"zz\r\nhello\r\n0\r\n\r\n"
    return [
        post("content-length 10^12 without a body", {"Content-Length": str(10**12), "Content-Type": mp}),
        post("content-length 10^30 without a body", {"Content-Length": "1" + "0" * 30, "Content-Type": mp}),
        post("content-length -1", {"Content-Length": "-1", "Content-Type": mp}),
        post("content-length 1e9", {"Content-Length": "1e9", "Content-Type": mp}),
        post("content-length twice", {"Content-Length": "10", "content-length": "20", "Content-Type": mp}),
        post(
            "content-length within the limit, client leaves",
            {"Content-Length": "1000", "Content-Type": mp},
            leaves=True,
        ),
        post(
            "chunked body past the limit",
            {"Transfer-Encoding": "chunked", "Content-Type": mp},
            stream=b"".join(b"%x\r\n%s\r\n" % (65536, b"\0" * 65536) for _ in range(12)) + b"0\r\n\r\n",
        ),
        post(
            "declared length past the limit, body sent",
            {"Content-Length": str(UPLOAD_LIMIT + 70 * 1024), "Content-Type": mp},
            stream=b"\0" * (UPLOAD_LIMIT + 70 * 1024),
        ),
        post("chunked junk size", {"Transfer-Encoding": "chunked", "Content-Type": mp}, stream=chunked_junk),
        post(
            "chunked and content-length", {"Transfer-Encoding": "chunked", "Content-Length": "5"}, stream=b"0\r\n\r\n"
        ),
        Probe("-", "non-ASCII key bytes", raw=raw_head("GET", "/v1/me", {"X-API-Key": b"mlk_\xc3\xa9\xff_\x80\x81"})),
        Probe("-", "non-ASCII bearer", raw=raw_head("GET", "/v1/me", {"Authorization": b"Bearer \xff\xfe\xfd"})),
        Probe("-", "non-ASCII header name", raw=raw_head("GET", "/healthz", {"X-\xe9": "1"})),
        Probe("-", "NUL in a header", raw=raw_head("GET", "/v1/me", {"X-API-Key": b"mlk_a\0b_c"})),
        Probe("-", "60 KB header", raw=raw_head("GET", "/v1/me", {"X-API-Key": "mlk_" + "a" * 60_000})),
        Probe("-", "300 headers", raw=raw_head("GET", "/healthz", {f"X-H{i}": "v" for i in range(300)})),
        Probe("-", "100 KB request target", raw=raw_head("GET", "/v1/models?" + "a" * 100_000)),
        Probe("-", "query of 10k params", raw=raw_head("GET", "/v1/models?" + "&".join(["p=v"] * 10_000))),
        Probe("-", "path traversal", raw=raw_head("GET", "/../../../../etc/passwd")),
        Probe("-", "encoded traversal in a task", raw=raw_head("POST", "/v1/models/..%2f..%2fetc/predict", key)),
        Probe("-", "dot segments to a route", raw=raw_head("GET", "/v1/models/fume_hood/../../../readyz")),
        Probe("-", "absolute-form target", raw=raw_head("GET", "http://evil.invalid/v1/models")),
        Probe("-", "asterisk target", raw=b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
        Probe("-", "HTTP/1.0 without host", raw=b"GET /v1/models HTTP/1.0\r\n\r\n"),
        Probe("-", "HTTP/2 preface", raw=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        Probe("-", "bad method", raw=b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        Probe("-", "no version", raw=b"GET /healthz\r\n\r\n"),
        Probe("-", "HTTP/9.9", raw=b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n"),
        Probe("-", "bare LF line ends", raw=b"GET /healthz HTTP/1.1\nHost: x\n\n"),
        Probe("-", "obs-fold header", raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n"),
        Probe("-", "two pipelined requests", raw=raw_head("GET", "/healthz") + raw_head("GET", "/v1/models")),
    ]


# Values put into path parameters: the real ones, and what an attacker or a broken client sends instead.
HOSTILE_TASKS = ["no_such_task", "FUME_HOOD", "..", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "a" * 3000, "%00", "%ff%fe",
                 "t%C3%A4sk", "fume_hood%2F..%2Fgas_leak", "-1", "1e309", "%20", "__init__", "{task}"]  # fmt: skip
HOSTILE_IDS = ["0", "-1", "abc", str(10**23), str(2**31), str(2**63), "1.5", "NaN", "inf", "%00", "%D9%A1", "1e3",
               "00000000000000000001", "%20%31"]  # fmt: skip
HOSTILE_STRINGS: list[Any] = ["", " ", "²", "١٢٣", "9" * 40, "-1", "1e999", "../../etc/passwd", "\0", "\ud800",
                              "champion", "challenger", "=HYPERLINK(\"x\")", "ü" * 5000, "x" * 70_000, None, 1, 1.5,
                              True, [], {}]  # fmt: skip
HOSTILE_VALUES: list[Any] = [*HOSTILE_STRINGS, 10**23, -(10**23), float("nan"), float("inf"), "true", "yes", [True]]
BOGUS_KEYS: list[str | None] = [None, "", "mlk_", "mlk__", "mlk_x_y", "mlk_" + "0" * 12 + "_guess", "x" * 5000,
                                "mlk_%00_a", "Bearer mlk_x_y"]  # fmt: skip


def example_path(path: str, params: dict[str, str]) -> str:
    for name, value in params.items():
        path = path.replace("{" + name + "}", value)
    return path


def realistic_body(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A plausible JSON body for an OpenAPI request schema (strings "1", booleans true)."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    body = {}
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type", "string")
        body[name] = {"string": "1", "boolean": True, "integer": 1, "number": 1.0}.get(kind, "1")
    return body


def json_text(value: Any) -> bytes:
    """JSON as a lenient client writes it: NaN and Infinity literals, lone surrogates escaped."""
    return json.dumps(value, allow_nan=True).encode()


def contributing_task() -> str:
    """A task that takes contributions (the first task if none does)."""
    from mlops.tasks.capabilities import TakesContributions

    return next((t for t in TASKS if isinstance(get_task(t), TakesContributions)), TASKS[0])


def openapi_probes(
    spec: dict[str, Any], admin: str, member: str, contributions_file: bytes, pending: Iterator[int]
) -> list[Probe]:
    """Probes for every operation the service's OpenAPI schema lists (predict's uploads come separately). A JSON body
    probe of an operation on a ``{contribution_id}`` goes to a contribution of its own from ``pending`` (ids of
    pending contributions), so each hostile body reaches the decision, not "already reviewed"."""
    components = spec.get("components", {}).get("schemas", {})
    probes: list[Probe] = []
    task = contributing_task()  # so that a realistic contribution is queued (and can be looked at and reviewed)
    labels = getattr(get_task(task), "contribution_labels", ("1",))
    layout_fields = {name: "5" for name in getattr(get_task(task), "contribution_fields", ())}
    good_params = {"task": task, "contribution_id": "1"}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            operation = f"{method.upper()} {path}"
            names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            queries = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            admin_headers = {"X-API-Key": admin}
            url = example_path(path, good_params)
            body = op.get("requestBody", {}).get("content", {})
            send: dict[str, Any] = {}
            if "application/json" in body:
                send = {"json": realistic_body(body["application/json"]["schema"], components)}
            elif "multipart/form-data" in body:
                form = components[body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]]
                fields = {k: labels[0] if k == "label" else "1" for k in form.get("properties", {}) if k != "file"}
                fields |= layout_fields  # what the task's data layout needs besides the label (not in the schema)
                send = {"files": {"file": ("x.png", contributions_file, "image/png")}, "data": fields}
            # who calls: nobody, guessers, a member where more is needed, the admin
            for key in BOGUS_KEYS:
                headers = {} if key is None else {"X-API-Key": key}
                probes.append(Probe(operation, f"key {str(key)[:20]!r}", method.upper(), url, {"headers": headers}))
            bearer = {"Authorization": "Bearer " + "z" * 300}
            probes.append(Probe(operation, "bogus bearer", method.upper(), url, {"headers": bearer, **send}))
            probes.append(Probe(operation, "member key", method.upper(), url, {"headers": {"X-API-Key": member}}))
            probes.append(Probe(operation, "admin, realistic", method.upper(), url, {"headers": admin_headers, **send}))
            # every path parameter, every hostile value, with the admin key (so the route's own code runs)
            for name in names:
                values = [*TASKS, *HOSTILE_TASKS] if name == "task" else ["1", "2", "2147483647", *HOSTILE_IDS]
                for value in values:
                    hostile = example_path(path, {**good_params, name: value})
                    kw = {"headers": admin_headers, **send}
                    probes.append(Probe(operation, f"{name}={value[:30]!r}", method.upper(), hostile, kw))
            for name in queries:
                for value in [*TASKS, *HOSTILE_TASKS, "pending", "accepted", "'; DROP TABLE contributions; --"]:
                    query = f"{url}?{name}={quote(value, safe='%')}"
                    probes.append(Probe(operation, f"?{name}={value[:30]!r}", method.upper(), query,
                                        {"headers": admin_headers}))  # fmt: skip
                probes.append(Probe(operation, f"?{name} repeated", method.upper(), f"{url}?{name}=a&{name}=b",
                                    {"headers": admin_headers}))  # fmt: skip
            if "json" in send:
                if "{contribution_id}" in path:
                    ids = ({**good_params, "contribution_id": str(next(pending))} for _ in itertools.count())
                    url_for = lambda: example_path(path, next(ids))  # noqa: B023, E731 (used at once)
                else:
                    url_for = lambda: url  # noqa: B023, E731
                probes += json_body_probes(operation, method.upper(), url_for, send["json"], admin_headers)
            if "files" in send:
                fields = send["data"]
                probes += multipart_probes(operation, url, contributions_file, fields)
                for name in ["file", *fields]:
                    for value in HOSTILE_STRINGS:
                        if not isinstance(value, str):
                            continue
                        encoded = value.encode("utf-8", "surrogatepass")  # (a lone surrogate as a client would)
                        data = {**fields, name: encoded} if name != "file" else fields
                        files = {"file": ("x.png", encoded, "image/png")} if name == "file" else send["files"]
                        kw = {"headers": admin_headers, "files": files, "data": data}
                        probes.append(Probe(operation, f"form {name}={value[:20]!r}", "POST", url, kw))
            # a method the route does not have
            other = "DELETE" if method != "delete" else "PUT"
            probes.append(Probe(operation, f"method {other}", other, url, {"headers": admin_headers}))
    return probes


def json_body_probes(
    operation: str, method: str, url_for: Callable[[], str], good: dict[str, Any], headers: dict
) -> list[Probe]:
    """Each field of a realistic body set to each hostile value or left out (each probe to ``url_for()``), then
    bodies that are not the JSON object the route reads."""
    ct = {**headers, "content-type": "application/json"}

    def probe(name: str, content: bytes, hdrs: dict | None = None, url: str | None = None) -> Probe:
        kw = {"headers": hdrs or ct, "content": content}
        return Probe(operation, f"body {name}", method, url or url_for(), kw)

    first = url_for()
    probes = [probe(f"{k}={str(v)[:20]!r}", json_text({**good, k: v})) for k in good for v in HOSTILE_VALUES]
    probes += [probe(f"without {k}", json_text({x: y for x, y in good.items() if x != k})) for k in good]
    probes += [
        probe("empty", b"", url=first),
        probe("null", b"null", url=first),
        probe("array", json_text([good]), url=first),
        probe("truncated", json_text(good)[:-3], url=first),
        probe("deep", b"[" * 20_000 + b"]" * 20_000, url=first),
        probe("long number", b'{"x": ' + b"9" * 20_000 + b"}", url=first),
        probe("duplicate keys", b'{"reason": "a", "reason": "b", "version": "1", "accept": true}', url=first),
        probe("extra fields", json_text({**good, **{f"k{i}": i for i in range(500)}}), url=first),
        probe("invalid utf-8", b'{"reason": "\xff\xfe", "version": "\xc3"}', url=first),
        probe("utf-16", json.dumps(good).encode("utf-16"), url=first),
        probe("over the request limit", json_text({**good, "pad": "x" * (REQUEST_LIMIT + 1)}), url=first),
        probe("as text/plain", json_text(good), {**headers, "content-type": "text/plain"}, first),
        probe("as form", b"reason=x", {**headers, "content-type": "application/x-www-form-urlencoded"}, first),
    ]
    return probes


def webhook_probes() -> list[Probe]:
    """The registry webhook (its body is read by the route, so the schema shows none): signed and forged deliveries."""
    url, op = "/v1/registry/events", "POST /v1/registry/events"

    def signed(body: bytes, delivery: str, stamp: str | None = None, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
        stamp = stamp or str(int(time.time()))
        text = f"{delivery}.{stamp}.{body.decode('utf-8', 'replace')}".encode()
        digest = base64.b64encode(hmac.new(secret.encode(), text, hashlib.sha256).digest()).decode()
        return {"x-mlflow-delivery-id": delivery, "x-mlflow-timestamp": stamp, "x-mlflow-signature": "v1," + digest}

    body = b'{"event": "model_version_alias.created"}'
    nonce = os.urandom(4).hex()
    cases = [
        ("unsigned", body, {}),
        ("signed", body, signed(body, f"d-{nonce}")),
        ("replayed", body, signed(body, f"d-{nonce}")),
        ("signed deep body", b"[" * 20_000, signed(b"[" * 20_000, f"e-{nonce}")),
        ("signed non-UTF-8 body", b"\xff\xfe", signed(b"\xff\xfe", f"f-{nonce}")),
        ("wrong secret", body, signed(body, f"g-{nonce}", secret="guess")),
        ("stamp 10^23", body, signed(body, f"h-{nonce}", stamp=str(10**23))),
        ("stamp superscript", body, {**signed(body, f"i-{nonce}"), "x-mlflow-timestamp": "²".encode("latin-1")}),
        ("stamp negative", body, signed(body, f"j-{nonce}", stamp="-5")),
        ("signature not v1", body, {**signed(body, f"k-{nonce}"), "x-mlflow-signature": "v2,abc"}),
        ("signature 10 KB", body, {**signed(body, f"l-{nonce}"), "x-mlflow-signature": "v1," + "A" * 10_000}),
        ("delivery id 10 KB", body, signed(body, "m" * 10_000)),
        ("over the request limit", b"x" * (REQUEST_LIMIT + 1), signed(b"x", f"n-{nonce}")),
    ]
    probes = [Probe(op, f"webhook {name}", "POST", url, {"content": c, "headers": h}) for name, c, h in cases]
    forged = {"x-mlflow-delivery-id": "d", "x-mlflow-timestamp": str(int(time.time())), "Content-Length": "2"}
    latin = raw_head("POST", url, {**forged, "x-mlflow-signature": b"v1,\xe9\xe9\xe9"}) + b"{}"
    return [*probes, Probe(op, "webhook latin-1 signature", raw=latin)]


def other_probes() -> list[Probe]:
    """Paths outside the schema: the page, the docs, unknown routes."""
    return [
        Probe("-", name, method, url)
        for name, method, url in [
            ("page", "GET", "/"),
            ("openapi", "GET", "/openapi.json"),
            ("docs", "GET", "/docs"),
            ("redoc", "GET", "/redoc"),
            ("unknown path", "GET", "/v2/anything"),
            ("predict by GET", "GET", f"/v1/models/{TASKS[0]}/predict"),
            ("trailing slash", "GET", "/v1/models/"),
            ("double slash", "GET", "//v1//models"),
            ("TRACE", "TRACE", "/healthz"),
            ("OPTIONS", "OPTIONS", "/v1/models"),
            ("HEAD", "HEAD", "/readyz"),
        ]
    ]


# --- sending --------------------------------------------------------------------------------------------------------


def raw_request(base: str, probe: Probe, timeout: float = 30) -> int | None:
    """Write ``probe.raw`` (then ``probe.stream`` until the server answers) and return the answer's status, or None
    when the connection closed without one."""
    where = urlsplit(base)
    with socket.create_connection((where.hostname, where.port), timeout=timeout) as sock:
        try:
            sock.sendall(probe.raw or b"")
            for start in range(0, len(probe.stream), 16384):
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered before reading everything (a 413): read that
                sock.sendall(probe.stream[start : start + 16384])
            if probe.leaves:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed its side: its answer may still be waiting to be read
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    if not data.startswith(b"HTTP/"):
        return None
    return int(data.split(b" ", 2)[1])


@dataclass
class Outcome:
    probe: Probe
    status: int | None
    error: str = ""
    seconds: float = 0.0


def send(http: httpx.Client, base: str, probe: Probe) -> Outcome:
    started = time.perf_counter()
    try:
        if probe.raw is not None:
            status = raw_request(base, probe)
        else:
            status = http.request(probe.method, probe.url, **probe.kwargs).status_code
        return Outcome(probe, status, seconds=time.perf_counter() - started)
    except (httpx.HTTPError, OSError) as exc:
        return Outcome(probe, None, repr(exc), time.perf_counter() - started)


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of ``pid`` and its descendants, in MB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


class Watch(threading.Thread):
    """Polls /healthz (and samples the server's memory) until stopped: what 'answering throughout' means here."""

    def __init__(self, base: str, pid: int):
        super().__init__(name="healthz-watch", daemon=True)
        self.base, self.pid = base, pid
        self.answers: list[tuple[int | str, float]] = []
        self.peak_mb = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=HEALTH_SECONDS * 4) as http:
            while not self.done.is_set():
                started = time.perf_counter()
                try:
                    status: int | str = http.get("/healthz").status_code
                except httpx.HTTPError as exc:
                    status = repr(exc)
                self.answers.append((status, time.perf_counter() - started))
                self.peak_mb = max(self.peak_mb, process_tree_rss_mb(self.pid))
                self.done.wait(0.2)


def probe_bytes(probe: Probe) -> int:
    """Bytes a probe sends (its body, or its raw request and stream)."""
    if probe.raw is not None:
        return len(probe.raw) + len(probe.stream)
    files = probe.kwargs.get("files", {})
    return len(probe.kwargs.get("content", b"")) + sum(len(f[1]) for f in files.values())


def run_corpus(base: str, probes: list[Probe]) -> list[Outcome]:
    with httpx.Client(base_url=base, timeout=60) as http, ThreadPoolExecutor(CLIENT_THREADS) as pool:
        return list(pool.map(lambda p: send(http, base, p), probes))


# --- the tests ------------------------------------------------------------------------------------------------------


def contribution_image(seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    return png(rng.integers(0, 256, (32, 32), dtype=np.uint8))


#: Contributions queued before the corpus, one for each review body the corpus sends.
PENDING = 64


def queue_contributions(http: httpx.Client, n: int) -> list[int]:
    """``n`` pending contributions (distinct images) of the contributing task; their ids."""
    task = contributing_task()
    fields = {name: "5" for name in getattr(get_task(task), "contribution_fields", ())}
    label = next(iter(getattr(get_task(task), "contribution_labels", ())), "x")
    ids = []
    for seed in range(1000, 1000 + n):
        files = {"file": ("c.png", contribution_image(seed), "image/png")}
        answer = http.post(f"/v1/contributions/{task}", files=files, data={"label": label, **fields})
        if answer.status_code == 201:
            ids.append(answer.json()["id"])
    return ids


@pytest.mark.timeout(420)  # the module fixture (train five tiny models, start the server) runs in this test's time
def test_hostile_corpus_gets_no_5xx_while_healthz_answers_and_memory_stays_bounded(service, capsys):
    """About 1,600 hostile requests (the module docstring says what is checked); the numbers are printed."""
    base, admin = service["base"], service["admin"]
    spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
    operations = {f"{m.upper()} {p}" for p, item in spec["paths"].items() for m in item}

    # Warm up (each task answers its example; every route once, below) so first-call imports and caches are not
    # counted as growth; queue the contributions the review bodies decide.
    with httpx.Client(base_url=base, headers={"X-API-Key": admin}, timeout=60) as http:
        for task in TASKS:
            example = get_task(task).example_upload(service["raws"][task])
            files = {"file": (example.filename, example.data, example.content_type)}
            warm = http.post(f"/v1/models/{task}/predict", files=files)
            assert warm.status_code == 200, warm.text[:500]
        pending = queue_contributions(http, PENDING)
    rng = np.random.default_rng(19)
    bodies_decide = itertools.chain(pending[2:], [2**31 - 1] * 999)  # (ids 1 and 2: the realistic probes decide them)
    probes = [
        *predict_probes(service["raws"], generic_blobs(rng), admin),
        *openapi_probes(spec, admin, service["member"], contribution_image(), bodies_decide),
        *webhook_probes(),
        *raw_probes(admin),
        *other_probes(),
    ]
    assert operations <= {p.operation for p in probes}, "an operation of the schema has no probe"
    run_corpus(base, [p for p in probes if p.name == "admin, realistic"])

    pid = service["proc"].pid
    log_start = service["log"].stat().st_size
    before = process_tree_rss_mb(pid)
    watch = Watch(base, pid)
    watch.start()
    started = time.perf_counter()
    try:
        outcomes = run_corpus(base, probes)
    finally:
        watch.done.set()
        watch.join(timeout=30)
    seconds = time.perf_counter() - started
    after = process_tree_rss_mb(pid)

    statuses: dict[int | None, int] = {}
    for o in outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    slowest = max(outcomes, key=lambda o: o.seconds)
    with capsys.disabled():
        print(
            f"\n[fuzz] {len(outcomes)} requests ({sum(map(probe_bytes, probes)) / 2**20:.0f} MB) in {seconds:.1f} s; "
            f"statuses {dict(sorted(statuses.items(), key=str))}"
            f"\n[fuzz] server RSS before {before:.0f} MB, after {after:.0f} MB (growth {after - before:+.0f} MB, "
            f"bound {RSS_GROWTH_BOUND_MB} MB), peak {watch.peak_mb:.0f} MB"
            f"\n[fuzz] /healthz answered {len(watch.answers)} times, slowest {max(s for _, s in watch.answers):.2f} s;"
            f" slowest probe {slowest.probe.operation} {slowest.probe.name!r} {slowest.seconds:.2f} s"
        )
    server_errors = [o for o in outcomes if o.status is not None and o.status >= 500]
    dropped = [o for o in outcomes if o.status is None and not o.probe.leaves]
    wrong = [f"{o.status} {o.error} <- {o.probe.operation}: {o.probe.name}" for o in server_errors + dropped]
    assert not wrong, (
        f"{len(wrong)} answers >= 500 or dropped:\n" + "\n".join(wrong) + "\n" + process_log(service["proc"], 6000)
    )
    unhealthy = [(s, round(t, 2)) for s, t in watch.answers if s != 200 or t > HEALTH_SECONDS]
    assert watch.answers and not unhealthy, f"/healthz did not answer 200 within {HEALTH_SECONDS} s: {unhealthy}"
    assert after - before < RSS_GROWTH_BOUND_MB, f"server memory grew {after - before:.0f} MB over the corpus"
    assert service["proc"].poll() is None, "the server died"
    # Nothing failed out of sight either (an answer sent, then an exception; a request-log row that could not be
    # written, which would leave a call unrecorded).
    with open(service["log"], "rb") as log:
        log.seek(log_start)
        written = log.read().decode("utf-8", "replace")
    assert "Traceback" not in written, written[max(0, written.index("Traceback") - 2000) :][:8000]


#: Examples schemathesis generates per operation and generation mode (and per task, for the task routes).
EXAMPLES = 10
EXAMPLES_PER_TASK = 3


def flatmap_path_parameters(_context: Any, path_parameters: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Schemathesis hook: contribution ids near the ones that exist (1, 2) half of the time, else as generated.
    (Task names are fixed per run by the test, so every task's route code is reached.)"""
    if not path_parameters or "contribution_id" not in path_parameters:
        return st.just(path_parameters)
    ids = st.one_of(st.sampled_from([1, 2]), st.just(path_parameters["contribution_id"]))
    return ids.map(lambda value: {**path_parameters, "contribution_id": value})


def schema_client(operation: Any, mode: Any, task: str | None, send: Callable[[Any], Any]) -> Callable[[], int]:
    """A Hypothesis test of one operation in one generation mode (``task`` fixed when given): each case drawn from
    schemathesis' strategy is sent, its answer checked by ``not_a_server_error``. Calling it returns the cases sent."""
    from hypothesis import Phase, given

    fixed = {"task": task} if task else None
    count = [0]

    @settings(
        max_examples=EXAMPLES_PER_TASK if task else EXAMPLES,
        deadline=None,
        database=None,  # no example database: each run draws afresh
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
    def check(case: schemathesis.Case) -> None:
        response = send(case)
        count[0] += 1
        if task and operation.path == "/v1/models/{task}/predict":  # the real name reaches the task's route code
            assert response.status_code != 404, f"{task} was not reached: {response.text[:300]}"
        case.validate_response(response, checks=[not_a_server_error])

    def run() -> int:
        check()
        return count[0]

    return run


@pytest.mark.timeout(300)
def test_openapi_schema_client_finds_no_server_error(service, capsys, tmp_path):
    """A property-based client of the service's own OpenAPI schema (schemathesis, read from the running server).

    Checked: no answer to any operation of the schema is a 5xx (schemathesis' ``not_a_server_error``), over positive
    (schema-conforming) and negative (schema-violating) cases of every operation, sent with a real admin key (the
    highest role, so every route's own code runs past the key check); for the operations with a ``{task}``, a run per
    real task name plus one with generated names (so predict, contribute, promote and rollback reach each task).
    Not checked: that answers conform to the schema (the routes do not declare their 401/409/413/415 answers), stateful
    sequences (links), the webhook's signed path (the schema shows no body for it; the corpus test signs deliveries).
    Schemathesis' pytest loader (``schemathesis.pytest.from_fixture``) does not run under pytest 9.2 (it sets
    ``Node._nodeid``, which pytest no longer has), so the cases are drawn here from each operation's strategy.
    """
    import requests
    from hypothesis.configuration import set_hypothesis_home_dir
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.core.failures import FailureGroup  # (a BaseExceptionGroup: not an Exception)

    # Hypothesis' caches go to this test's folder, not to a .hypothesis/ in the repository (for the rest of the
    # process: a cache written after the test, as on a failure, must not land in the working directory either).
    set_hypothesis_home_dir(tmp_path / "hypothesis")
    base, key = service["base"], service["admin"]
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=30)
    schema.hook(flatmap_path_parameters)
    failures: list[str] = []
    sent: dict[str, int] = {}
    with requests.Session() as session:

        def send(case: schemathesis.Case) -> Any:
            return case.call(base_url=base, session=session, headers={"X-API-Key": key}, timeout=60)

        for result in schema.get_all_operations():
            operation = result.ok()
            for task in [*TASKS, None] if "{task}" in operation.path else [None]:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    try:
                        sent[operation.label] = (
                            sent.get(operation.label, 0) + schema_client(operation, mode, task, send)()
                        )
                    except Unsatisfiable:  # nothing of the operation can be made invalid (no body, free strings)
                        continue
                    except (Exception, FailureGroup) as exc:  # each failure is collected, all reported together
                        failures.append(f"{operation.label} ({mode.value}, task={task}): {exc}")
    with capsys.disabled():
        print(f"\n[schemathesis] {sum(sent.values())} requests in all; per operation: {sent}")
    assert not failures, f"{len(failures)} runs found a server error:\n\n" + "\n\n".join(failures)
    assert set(sent) == {op.ok().label for op in schema.get_all_operations()}, "an operation was never called"


# --- what the corpus found, kept as fast in-process checks ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_refusal_echoing_nan_or_a_lone_surrogate_is_still_strict_json():
    """FastAPI's 422 echoes the offending input; NaN, Infinity or "\\ud800" in a JSON body made that answer a 500."""
    from mlops.serving.app import json_safe

    errors = [
        {"loc": ("body", "accept"), "input": float("nan"), "ctx": {"error": ValueError("x")}},
        {"loc": ("body", "note"), "input": "\ud800 and \0", "limit": float("-inf"), "raw": b"\xff\xfe"},
        {"loc": ("body", "version"), "input": 10**23, "ok": [True, None, 1.5]},
    ]
    text = json.dumps(json_safe(errors), allow_nan=False, ensure_ascii=False).encode("utf-8")
    decoded = json.loads(text)
    assert decoded[0]["input"] == "nan" and decoded[0]["ctx"] == {"error": "x"}
    assert decoded[1]["input"] == "\\ud800 and \0" and decoded[1]["limit"] == "-inf"
    assert decoded[2] == {"loc": ["body", "version"], "input": 10**23, "ok": [True, None, 1.5]}


@pytest.mark.timeout(120)
def test_rows_and_notes_with_nul_or_lone_surrogates_are_stored_on_postgresql(tmp_path):
    """A NUL in the URL's path or a lone surrogate in a body's version lost the call's request-log row (PostgreSQL
    refuses NUL, no database encodes a lone surrogate); a review note holding either was a 500 after the sample had
    been written; a NUL in the contribution list's query was a 500."""
    from mlops.members.requestlog import RequestLog
    from mlops.members.review import ReviewQueue

    with pg_database("mlops_fuzz_store") as url:
        log = RequestLog(url, flush_seconds=5)
        try:
            log.record(member="eve", route="/v1/models/\0/predict", status=404, latency_ms=1.0)
            log.record(member="eve", route="/v1/registry/x/promote", version="\ud800", status=409, latency_ms=1.0)
            log.record(member="bob", route="/v1/models/fracture/predict", status=200, latency_ms=1.0)
            log.flush()
            rows = sorted((r["member"], r["route"], r["version"]) for r in log.rows())
        finally:
            log.close()
        assert rows == [
            ("bob", "/v1/models/fracture/predict", None),
            ("eve", "/v1/models/\\x00/predict", None),
            ("eve", "/v1/registry/x/promote", "\\ud800"),
        ]
        queue = ReviewQueue(url, tmp_path / "blobs")
        task = contributing_task()
        fields = {name: "5" for name in getattr(get_task(task), "contribution_fields", ())}
        label = next(iter(getattr(get_task(task), "contribution_labels", ())), "x")
        c = queue.submit(task, "acme", None, contribution_image(3), label, fields)
        assert queue.list("\0") == [] and queue.list(task, "\0") == []
        assert queue.reject(c.id, "steve", "blurred \ud800\0").review_note == "blurred \\ud800\\x00"
        queue.engine.dispose()
