"""Reading an uploaded file within the configured size limit (admission has already bounded the whole body)."""

from __future__ import annotations

import hashlib

from fastapi import UploadFile

from mlops.inference import BadInput


async def read_upload(upload: UploadFile, limit: int) -> tuple[bytes, str]:
    """The file's bytes (at most ``limit``, else 413) and their SHA-256 (what the request log keeps)."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise BadInput(f"upload is larger than the limit of {limit} bytes", status=413)
    return data, hashlib.sha256(data).hexdigest()
