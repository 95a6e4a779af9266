"""Damaged PNG image data found without decoding: every chunk the decoder needs checked against its CRC-32.

Why: the header probe (images.probe_frame) reads only a file's first and last bytes, so damage inside the
compressed image data (a bit flip, an overwritten block) passed it, and a search found it only when
`load_crops` decoded the frame, after folds.json was written. A PNG stores a CRC-32 with every chunk; libpng
(OpenCV's decoder) refuses a file whose IHDR, PLTE or IDAT chunk fails it, and only warns for other chunks
(measured with OpenCV 5.0.0: a damaged tEXt or IEND CRC still decodes; tests/data/test_guard_frames.py checks
this agreement against cv2.imdecode). Checking exactly those chunks costs one read of the file and a CRC-32
(0.05 s for the demo's 2,192 frames from a warm file cache, against 12 s to decode them with
images.read_frame), so every search's data check runs it; `check_data` decodes every frame instead.

Not covered (only a full decode finds it): a JPEG's data (JPEG has no checksum), and a PNG whose chunks
carry valid CRCs over bad content (a faulty writer).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from medfusion.data.images import PNG_SIGNATURE

DECODER_CHUNKS = (b"IHDR", b"PLTE", b"IDAT")  # a CRC error in one of these makes libpng refuse the file


def png_damage(path) -> str | None:
    """Why the PNG at `path` cannot be decoded (a message naming the file, chunk and byte offset), or None.

    None as well for a file that is not a PNG: the header probe and the decoder judge those.
    """
    p = Path(path)
    data = p.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        return None
    i = len(PNG_SIGNATURE)
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i:i + 4])
        tag = data[i + 4:i + 8]
        end = i + 8 + length
        if end + 4 > len(data):
            return (f"image file {str(p)!r}: its {tag!r} chunk at byte {i} declares {length} bytes, more than the "
                    f"file holds ({len(data)} bytes): the file is damaged; copy it again from the source")
        if tag in DECODER_CHUNKS:
            (stored,) = struct.unpack(">I", data[end:end + 4])
            if zlib.crc32(data[i + 4:end]) & 0xFFFFFFFF != stored:
                return (f"image file {str(p)!r}: its {tag.decode('ascii')} chunk at byte {i} fails its CRC-32 check "
                        "(damaged image data; a decoder refuses it): copy it again from the source or replace it")
        if tag == b"IEND":
            return None
        i = end + 4
    return None  # no IEND: the header probe already skips such a file as cut short
