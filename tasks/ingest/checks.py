"""Checks on downloaded bytes that img2dataset does not make, applied inside its resize step: a
JPEG cut short in transfer passes as good with grey rows on some decoder builds, and on the OpenCV
here (4.14) reads "Image decoding error" like HTML bytes; it becomes its own counted reason. An
image whose header announces more pixels than max_image_area is refused before it is decoded.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Any

TRUNCATED = "truncated image (no JPEG end-of-image marker after the last scan)"
# one message for every size, so the manifest counts them on one line
TOO_LARGE = "image area too large (the header says more pixels than max_image_area; not decoded)"


def jpeg_is_truncated(data: bytes) -> bool:
    """True for a JPEG with no end-of-image marker (FFD9) after its last start-of-scan (FFDA).

    Entropy-coded data cannot contain FFD9 (0xFF bytes are stuffed), and an EXIF thumbnail's
    own markers come before the main image's last scan, so this is exact for whole files.
    """
    if not data.startswith(b"\xff\xd8"):
        return False  # not a JPEG: the decoder decides
    last_scan = data.rfind(b"\xff\xda")
    return last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0


def header_area(data: bytes) -> tuple[int, str] | None:
    """(pixels, "WxH") from the image's header alone (PIL reads no pixels to open a file), or None
    when PIL does not know the format (the decoder then decides)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                return width * height, f"{width}x{height}"
    except Image.DecompressionBombError as exc:  # PIL refuses to open it at all: say what it read
        match = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(match.group(1)) if match else 1 << 40
        return pixels, f"{pixels} pixels"
    except Exception:  # noqa: BLE001 (not a format PIL reads: leave it to the decoder)
        return None


class StrictResizer:
    """Wraps img2dataset's Resizer: same call and result, plus two checks before it decodes:
    a JPEG cut short in transfer, and an image whose header announces more than `max_image_area`
    pixels (a decompression bomb: a small file that decodes to gigabytes). img2dataset checks the
    area only after a full decode.

    Pickled into img2dataset's worker processes, so it lives in a plain importable module.
    """

    def __init__(self, inner: Any, reject_truncated: bool = True, max_image_area: float | None = None):
        self.inner = inner
        self.reject_truncated = reject_truncated
        self.max_image_area = max_image_area

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> tuple:
        img_stream.seek(0)
        data = img_stream.read()
        img_stream.seek(0)
        if self.reject_truncated and jpeg_is_truncated(data):
            return None, None, None, None, None, TRUNCATED
        if self.max_image_area is not None and self.max_image_area != float("inf"):
            area = header_area(data)
            if area is not None and area[0] > self.max_image_area:
                return None, None, None, None, None, TOO_LARGE
        return self.inner(img_stream, blurring_bbox_list)
