"""Image decoding (OpenCV), wound-box cropping, aspect-preserving resize + pad, and a crop cache.

Every image leaves this module as uint8 RGB with values in [0, 255]; nothing here normalises
(EfficientNet rescales internally).

Conventions
* A box is (xmin, ymin, xmax, ymax) in pixels, xmax/ymax exclusive: the box covers
  frame[ymin:ymax, xmin:xmax].
* `read_frame` (any frame; check_data decodes with it) min-max scales a 16-bit single-channel frame:
  round((v - min) / (max - min) * 255); a constant frame becomes zeros. `load_crops` does not use
  that for depth_map / thermal_map: 16-bit maps are read as numbers, cropped first and normalised
  by the modality's rule (data/maps.py, `data.maps`); 8-bit maps take the read_frame path.
* 16-bit colour frames are divided by 257 (rounded).

Checking frames without decoding them (`probe_frame`)
* The loader (dfu.py) probes every frame it is about to reference: the file exists, is not empty,
  starts with a PNG or JPEG signature (any other content is decoded once by OpenCV to decide),
  is not cut short (a PNG must end with its IEND chunk, a JPEG with its EOI marker) and has a
  non-zero width and height, read from the header. That costs two small reads per file, so
  building a manifest never decodes an image, and boxes are checked against the header's frame
  size there. A frame that fails is skipped with its reason (`UnreadableFrame.reason`); so is a frame
  whose header declares more than `data.max_frame_pixels` pixels ("too_large"), before any decoding.
* A full decode happens once per frame: in `load_crops` (which caches the crops) during a search,
  or in `python main.py --mode check_data`, which decodes every referenced frame to find damage a
  header cannot show (a corrupted compressed stream). There a failure is a problem to fix, not a
  skip, because a search would stop at that file.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from medfusion.data.manifest import BOX_FIELDS
from medfusion.data.maps import MAP_MODALITIES, map_crop, maps_from_report, minmax_u8, read_map

_CROP_CACHE: dict = {}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
UNREADABLE_REASONS = ("missing_file", "empty_file", "not_an_image", "truncated", "too_large")
_TAIL = 1024  # end markers are searched in the last bytes (tolerates a little trailing data)


class UnreadableFrame(ValueError):
    """A frame that cannot be used; `reason` is one of UNREADABLE_REASONS, the message names the file."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _jpeg_size(data: bytes):
    """(width, height) from the first SOF segment of a JPEG, or None."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if i + 9 > len(data):
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def probe_frame(path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an image file, checked without decoding it; UnreadableFrame otherwise.

    See the module docstring for what is checked. Cheap: reads the first and last bytes of a PNG.
    `max_pixels` (data.max_frame_pixels): a header declaring a larger frame is refused ("too_large")
    before anything is decoded, since decoding it would take seconds and gigabytes.
    """
    p = Path(path)
    if not p.is_file():
        raise UnreadableFrame("missing_file", f"image file {str(p)!r} does not exist")
    size = p.stat().st_size
    if size == 0:
        raise UnreadableFrame("empty_file", f"image file {str(p)!r} is empty (0 bytes)")
    with open(p, "rb") as f:
        head = f.read(64)
        if head.startswith(JPEG_SIGNATURE):
            f.seek(0)
            data = f.read()
            tail = data[-_TAIL:]
        else:
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    if head.startswith(PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise UnreadableFrame("truncated", f"image file {str(p)!r} is a PNG without a complete header")
        w, h = struct.unpack(">II", head[16:24])
        if b"IEND" not in tail:
            raise UnreadableFrame("truncated", f"image file {str(p)!r} is a PNG cut short (no IEND end chunk, "
                                                f"{size} bytes); copy the file again from the source")
    elif head.startswith(JPEG_SIGNATURE):
        if b"\xff\xd9" not in tail:
            raise UnreadableFrame("truncated", f"image file {str(p)!r} is a JPEG cut short (no end marker, "
                                                f"{size} bytes); copy the file again from the source")
        wh = _jpeg_size(data)
        if wh is None:
            raise UnreadableFrame("truncated", f"image file {str(p)!r} is a JPEG without a readable size header")
        w, h = wh
    else:  # another format OpenCV may know (rare): decide by decoding it once
        img = cv2.imdecode(np.fromfile(str(p), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise UnreadableFrame("not_an_image", f"image file {str(p)!r} is not an image OpenCV can read "
                                                   f"(starts with {head[:8]!r}); replace it with a PNG")
        h, w = img.shape[:2]
    if w == 0 or h == 0:
        raise UnreadableFrame("not_an_image", f"image file {str(p)!r} declares a {w}x{h} frame")
    if max_pixels is not None and w * h > max_pixels:
        raise UnreadableFrame("too_large", f"image file {str(p)!r} declares a {w}x{h} frame ({w * h:,} pixels), "
                                           f"more than data.max_frame_pixels ({max_pixels:,}); not decoded. Replace "
                                           "the file, or raise data.max_frame_pixels if the camera really is that large")
    return int(w), int(h)


def clear_crop_cache() -> None:
    _CROP_CACHE.clear()


_gray16_to_u8 = minmax_u8  # the first release's rule, one definition (maps.py)


def read_frame(path) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 RGB array (see the module docstring for the rules)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file {str(p)!r} does not exist")
    if p.stat().st_size == 0:
        raise ValueError(f"image file {str(p)!r} is empty (0 bytes)")
    # imdecode(fromfile) == imread(IMREAD_UNCHANGED), but also works for non-ASCII paths
    img = cv2.imdecode(np.fromfile(str(p), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"image file {str(p)!r} could not be decoded by OpenCV (corrupt or not an image)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        g = img if img.dtype == np.uint8 else _gray16_to_u8(img)
        return np.repeat(g[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"image file {str(p)!r} has unsupported shape {img.shape}")
    rgb = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
    if rgb.dtype == np.uint16:
        rgb = np.rint(rgb.astype(np.float64) / 257.0).astype(np.uint8)
    elif rgb.dtype != np.uint8:
        raise ValueError(f"image file {str(p)!r} has unsupported colour dtype {rgb.dtype}")
    return np.ascontiguousarray(rgb)


def crop_box(frame: np.ndarray, box, margin: float) -> np.ndarray:
    """Crop `box` enlarged by margin x its width/height on each side, clipped to the frame."""
    xmin, ymin, xmax, ymax = (float(v) for v in box)
    h, w = frame.shape[:2]
    if xmax <= xmin or ymax <= ymin:
        raise ValueError(f"box {tuple(box)} has zero or negative area (xmax must exceed xmin, ymax ymin)")
    if xmax <= 0 or ymax <= 0 or xmin >= w or ymin >= h:
        raise ValueError(f"box {tuple(box)} lies entirely outside the {w}x{h} frame")
    dx, dy = margin * (xmax - xmin), margin * (ymax - ymin)
    x0 = max(0, int(math.floor(xmin - dx)))
    y0 = max(0, int(math.floor(ymin - dy)))
    x1 = min(w, int(math.ceil(xmax + dx)))
    y1 = min(h, int(math.ceil(ymax + dy)))
    return frame[y0:y1, x0:x1]


def resize_pad(img: np.ndarray, size: int) -> np.ndarray:
    """Aspect-preserving resize so the long side == size, then centred zero padding to (size, size, 3)."""
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot resize an empty image of shape {img.shape}")
    scale = size / max(h, w)
    nh = min(size, max(1, int(round(h * scale))))
    nw = min(size, max(1, int(round(w * scale))))
    if (nh, nw) == (h, w):
        resized = img
    else:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=interp)
        if resized.ndim == 2:
            resized = resized[:, :, None]
    out = np.zeros((size, size, img.shape[2]), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.clip(resized, 0, 255).astype(np.uint8)
    return out


def _decode(path: str, map_cfg):
    """(frame, raw map): a 16-bit map of a map modality comes back raw (frame None), anything else as RGB."""
    if map_cfg is not None:
        p = Path(path)
        if p.is_file() and p.stat().st_size > 0:
            raw = read_map(p)
            if raw is not None:
                return None, raw
    return read_frame(path), None


def decode_workers() -> int:
    """Threads for load_crops: OpenCV releases the GIL while it decodes and resizes, so threads scale."""
    return max(1, min(DECODE_THREADS_MAX, os.cpu_count() or 1))


DECODE_THREADS_MAX = 8  # beyond this the disk, not the CPU, is the limit for PNG frames


def load_crops(manifest, modality: str, image_size: int, margin: float, log: logging.Logger | None = None,
               maps=None, workers: int | None = None) -> np.ndarray:
    """Crops of one modality for every manifest row: uint8 (N, image_size, image_size, 3).

    Each distinct frame is decoded once, by a pool of `workers` threads (default decode_workers()),
    each writing its frame's rows straight into the one output array; the result is cached
    in-process (keyed by the paths, boxes, size, margin and map rule) and returned read-only, the
    same array to every caller - copy it before writing into it. `maps` (a MapsConfig; default:
    the one load_dfu recorded in manifest.report) sets how a 16-bit depth_map / thermal_map is normalised.
    """
    log = log or logging.getLogger("medfusion.data.images")
    s = manifest.samples
    paths = s[f"{modality}_path"].astype(str).tolist()
    boxes = [tuple(int(v) for v in b) for b in s[[f"{modality}_{k}" for k in BOX_FIELDS]].to_numpy()]
    map_cfg = getattr(maps or maps_from_report(manifest.report), modality) if modality in MAP_MODALITIES else None
    key = (tuple(zip(paths, boxes)), int(image_size), float(margin), map_cfg)
    hit = _CROP_CACHE.get(key)
    if hit is not None:
        return hit

    out = np.zeros((len(paths), image_size, image_size, 3), dtype=np.uint8)
    by_frame: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        by_frame.setdefault(p, []).append(i)
    n = len(by_frame)
    marks = {max(1, round(n * q)) for q in (0.25, 0.5, 0.75, 1.0)} if n >= 100 else set()
    ids = s["sample_id"].astype(str).tolist() if "sample_id" in s.columns else [str(i) for i in range(len(paths))]

    def one_frame(item) -> None:
        p, rows = item
        try:
            frame, raw = _decode(p, map_cfg)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(
                f"{modality} frame of sample {ids[rows[0]]!r}: {exc}. Replace or remove the file; "
                "`python main.py --mode check_data --data_dir DIR` decodes every frame and lists all such files"
            ) from None
        for i in rows:
            try:
                crop = crop_box(frame, boxes[i], margin) if raw is None else map_crop(raw, boxes[i], margin, map_cfg)
            except ValueError as exc:
                raise ValueError(f"sample {ids[i]!r}, {modality} frame {p!r}: {exc}") from None
            out[i] = resize_pad(crop, image_size)

    workers = decode_workers() if workers is None else max(1, int(workers))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"decode-{modality}") as pool:
        # results in frame order: the first bad frame in manifest order is the one reported
        for done, _ in enumerate(pool.map(one_frame, by_frame.items()), start=1):
            if done in marks:
                log.info("%s crops: %d/%d frames decoded (%d%%, %d threads)", modality, done, n,
                         round(100 * done / n), workers)
    out.flags.writeable = False
    _CROP_CACHE[key] = out
    return out
