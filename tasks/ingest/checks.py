"""Checks on downloaded bytes that img2dataset does not make, applied inside its resize step: a
JPEG cut short in transfer passes as good with grey rows on some decoder builds, and on the OpenCV
here (4.14) reads "Image decoding error" like HTML bytes; it becomes its own counted reason.
"""

from __future__ import annotations

import io
from typing import Any

TRUNCATED = "truncated image (no JPEG end-of-image marker after the last scan)"


def jpeg_is_truncated(data: bytes) -> bool:
    """True for a JPEG with no end-of-image marker (FFD9) after its last start-of-scan (FFDA).

    Entropy-coded data cannot contain FFD9 (0xFF bytes are stuffed), and an EXIF thumbnail's
    own markers come before the main image's last scan, so this is exact for whole files.
    """
    if not data.startswith(b"\xff\xd8"):
        return False  # not a JPEG: the decoder decides
    last_scan = data.rfind(b"\xff\xda")
    return last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0


class StrictResizer:
    """Wraps img2dataset's Resizer: same call and result, plus the truncation check.

    Pickled into img2dataset's worker processes, so it lives in a plain importable module.
    """

    def __init__(self, inner: Any, reject_truncated: bool = True):
        self.inner = inner
        self.reject_truncated = reject_truncated

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> tuple:
        if self.reject_truncated:
            img_stream.seek(0)
            if jpeg_is_truncated(img_stream.read()):
                return None, None, None, None, None, TRUNCATED
            img_stream.seek(0)
        return self.inner(img_stream, blurring_bbox_list)
