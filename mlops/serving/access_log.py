"""The access log never shows a secret a client put in the URL.

The service reads keys only from headers (X-API-Key, Authorization), but a client that appends ``?api_key=...``
would have it written by uvicorn's access log, which operators ship to log stores with wider access than the key
table. The filter rewrites the logged path with such values replaced.
"""

from __future__ import annotations

import logging
import re

#: Query parameters whose values are secrets (matched anywhere in the name, case-insensitive).
_SECRET = re.compile(r"([?&][^=&#]*(?:key|token|secret|password|passwd|auth|signature|sig)[^=&#]*=)[^&#]*", re.I)


def redact(path: str) -> str:
    return _SECRET.sub(r"\1[redacted]", path)


class RedactQuerySecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access record: (client, method, path with query, http version, status)
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            record.args = (*record.args[:2], redact(record.args[2]), *record.args[3:])
        return True


def redact_query_secrets() -> None:
    """Install the filter on uvicorn's access logger (idempotent)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQuerySecrets) for f in logger.filters):
        logger.addFilter(RedactQuerySecrets())
