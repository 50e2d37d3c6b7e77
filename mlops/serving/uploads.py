"""Reading an uploaded file within the configured size limit (the body-size check of a WAF)."""

from __future__ import annotations

import hashlib

from fastapi import Request, UploadFile

from mlops.inference import BadInput

#: Room for multipart boundaries and headers beside the file itself.
MULTIPART_OVERHEAD = 64 * 1024


def check_declared_length(request: Request, limit: int) -> None:
    """Refuse an oversized body from its Content-Length before reading any of it."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD:
        raise BadInput(f"upload is larger than the limit of {limit} bytes", status=413)


async def read_upload(upload: UploadFile, limit: int) -> tuple[bytes, str]:
    """The file's bytes (at most ``limit``, else 413) and their SHA-256 (what the request log keeps)."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise BadInput(f"upload is larger than the limit of {limit} bytes", status=413)
    return data, hashlib.sha256(data).hexdigest()
