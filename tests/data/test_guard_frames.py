"""Image files that were accepted silently or found too late (issue 13 [guard]): a JPEG under a .png name is
warned about by name; damaged image data stops a search at its data check, before any run folder exists
(it used to surface in load_crops, after folds.json was written)."""

import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from medfusion.config import DataConfig, load_config
from medfusion.data.check import check_dataset, run_check_data
from medfusion.data.dfu import load_dfu
from medfusion.data.integrity import png_damage
from tests.data.conftest import B1, build_layout, meta_row

ROOT = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("tests.guard_frames")


def _dataset(tmp_path) -> Path:
    labels = "IPRIPR"
    meta = [meta_row(p, p, 0, 1, labels[p - 1], age=50 + p) for p in range(1, 7)]
    depth = {f"{p}_P{p:03d}001ADMW.png": [(1, B1)] for p in range(1, 7)}
    thermal = {f"{10 + p}_P{p:03d}001ATMW.png": [(1, B1)] for p in range(1, 7)}
    return build_layout(tmp_path / "data", meta, depth, thermal)


def _cfg(root):
    return load_config(None, {"data.data_dir": str(root), "data.demo": False, "search.cv_folds": 2})


def _chunks(data: bytes):
    """(tag, offset, length) of every chunk of a PNG."""
    i, out = 8, []
    while i + 8 <= len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        out.append((data[i + 4:i + 8], i, n))
        i += 12 + n
    return out


def _damage(data: bytes, tag: bytes, where: str, fix_crc: bool = False) -> bytes:
    """Flip bytes of chunk `tag`: its body ("body") or its stored CRC ("crc"); fix_crc re-signs the damaged body."""
    b = bytearray(data)
    t, i, n = next(c for c in _chunks(data) if c[0] == tag)
    if where == "crc":
        b[i + 8 + n] ^= 0xFF
    else:
        for j in range(i + 8 + n // 4, i + 8 + max(n // 4 + 1, (3 * n) // 4)):
            b[j] ^= 0x5A
        if fix_crc:
            b[i + 8 + n:i + 12 + n] = struct.pack(">I", zlib.crc32(bytes(b[i + 4:i + 8 + n])) & 0xFFFFFFFF)
    return bytes(b)


def _with_text_chunk(data: bytes) -> bytes:
    body = b"Comment\x00medfusion"
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
    return data[:33] + chunk + data[33:]  # after the signature and IHDR


@pytest.mark.parametrize("kind,tag,where", [
    ("rgb", b"IHDR", "body"), ("rgb", b"IDAT", "body"), ("rgb", b"IDAT", "crc"), ("palette", b"PLTE", "crc"),
    ("map16", b"IDAT", "body"), ("rgb", b"tEXt", "crc"), ("rgb", b"tEXt", "body"), ("rgb", b"IEND", "crc"),
])
def test_png_damage_flags_exactly_what_the_decoder_refuses(tmp_path, kind, tag, where):
    rng = np.random.default_rng(0)
    img = {"rgb": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "palette": None,
           "map16": rng.integers(0, 5000, (48, 64), dtype=np.uint16)}[kind]
    if kind == "palette":
        from medfusion.data.synthetic_frames import THERMAL_PALETTE, write_png

        write_png(tmp_path / "p.png", rng.integers(0, 256, (48, 64), dtype=np.uint8), THERMAL_PALETTE)
        data = (tmp_path / "p.png").read_bytes()
    else:
        data = bytes(cv2.imencode(".png", img)[1])
    data = _damage(_with_text_chunk(data), tag, where)
    path = tmp_path / "f.png"
    path.write_bytes(data)
    decodes = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None  # the reference
    why = png_damage(path)
    assert (why is None) == decodes, (why, decodes)
    if why:
        assert str(path) in why and tag.decode() in why and "fails its CRC-32 check" in why


def test_an_intact_png_and_a_jpeg_have_no_damage(tmp_path):
    (tmp_path / "a.png").write_bytes(bytes(cv2.imencode(".png", np.full((8, 8, 3), 7, np.uint8))[1]))
    (tmp_path / "b.png").write_bytes(bytes(cv2.imencode(".jpg", np.full((8, 8, 3), 7, np.uint8))[1]))
    assert png_damage(tmp_path / "a.png") is None and png_damage(tmp_path / "b.png") is None


def test_a_chunk_running_past_the_end_of_the_file_is_damage(tmp_path):
    data = bytearray(cv2.imencode(".png", np.full((8, 8, 3), 7, np.uint8))[1])
    t, i, n = next(c for c in _chunks(bytes(data)) if c[0] == b"IDAT")
    data[i:i + 4] = struct.pack(">I", 10_000)
    (tmp_path / "a.png").write_bytes(bytes(data))
    assert "declares 10000 bytes, more than the file holds" in png_damage(tmp_path / "a.png")


@pytest.mark.slow
def test_a_damaged_colour_frame_stops_the_search_before_any_run_folder(tmp_path, capsys, monkeypatch):
    import tensorflow as tf

    from medfusion import cli
    from medfusion.training import devices

    monkeypatch.setattr(devices, "configure_strategy", lambda rt: tf.distribute.OneDeviceStrategy("/cpu:0"))
    root = _dataset(tmp_path)
    victim = root / "depth_rgb" / "3_P003001ADMW.png"  # 8-bit: the loader only reads its header
    victim.write_bytes(_damage(victim.read_bytes(), b"IDAT", "body"))
    check = check_dataset(_cfg(root), LOG)
    assert not check.ok and len(check.problems) == 1 and str(victim) in check.problems[0], check.problems
    assert "1 image file(s) used by 1 sample(s) have damaged image data" in check.problems[0]
    logs = tmp_path / "logs"
    rc = cli.main(["--config", str(ROOT / "configs" / "demo.yaml"), "--data_dir", str(root), "--cv_folds", "2",
                   "--run_name", "r", "--device_mode", "cpu", "--set", f"runtime.logs_dir={logs}",
                   "--set", "data.demo=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "damaged image data" in err and victim.name in err, err[-2000:]
    assert not (logs / "r").exists()


def test_a_map_the_loader_cannot_decode_is_a_problem_even_with_valid_checksums(tmp_path):
    root = _dataset(tmp_path)
    victim = root / "depth_map" / "2_P002001ADMW.png"  # 16-bit: decoded once while the manifest is built
    victim.write_bytes(_damage(victim.read_bytes(), b"IDAT", "body", fix_crc=True))
    assert png_damage(victim) is None  # the checksums cannot see it ...
    man = load_dfu(root, DataConfig())
    assert str(victim) in man.report["undecodable_maps"]  # ... but the loader's decode did
    check = check_dataset(_cfg(root), LOG)
    assert not check.ok and len(check.problems) == 1 and str(victim) in check.problems[0], check.problems
    assert "could not be decoded" in check.problems[0]


def test_a_colour_frame_with_valid_checksums_over_bad_data_is_left_to_check_data(tmp_path, caplog):
    """The documented limit of the cheap check: only a full decode sees damage the CRCs vouch for."""
    root = _dataset(tmp_path)
    victim = root / "thermal_rgb" / "14_P004001ATMW.png"
    victim.write_bytes(_damage(victim.read_bytes(), b"IDAT", "body", fix_crc=True))
    assert check_dataset(_cfg(root), LOG).ok
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert run_check_data(_cfg(root), LOG) == 1
    assert "cannot be decoded" in caplog.text and victim.name in caplog.text


def test_a_jpeg_under_a_png_name_is_used_and_warned_about_by_name(tmp_path, caplog):
    root = _dataset(tmp_path)
    victim = root / "thermal_rgb" / "15_P005001ATMW.png"
    victim.write_bytes(bytes(cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1]))
    with caplog.at_level(logging.WARNING):
        man = load_dfu(root, DataConfig())
    assert len(man) == 6  # still read (OpenCV decodes by content)
    assert man.report["jpeg_as_png"] == {"count": 1, "examples": ["thermal_rgb/15_P005001ATMW.png"]}
    assert "1 image file(s) hold JPEG data under a .png name, e.g. ['thermal_rgb/15_P005001ATMW.png']" in caplog.text
    assert "export them from the source as PNG" in caplog.text
    warnings = check_dataset(_cfg(root), LOG).warnings
    assert any("JPEG data under a .png name" in w and "thermal_rgb/15_P005001ATMW.png" in w for w in warnings)
