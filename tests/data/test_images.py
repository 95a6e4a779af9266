import cv2
import numpy as np
import pytest

from medfusion.config import DataConfig
from medfusion.data import images
from medfusion.data.dfu import load_dfu
from medfusion.data.images import clear_crop_cache, crop_box, load_crops, read_frame, resize_pad


def _write(path, arr):
    assert cv2.imwrite(str(path), arr)
    return path


def test_read_gray8(tmp_path):
    g = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    out = read_frame(_write(tmp_path / "g.png", g))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)


def test_read_gray16_minmax(tmp_path):
    g = np.random.default_rng(1).integers(500, 3000, (48, 64)).astype(np.uint16)
    out = read_frame(_write(tmp_path / "g16.png", g))
    ref = np.rint((g.astype(float) - g.min()) / (g.max() - g.min()) * 255).astype(np.uint8)
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out[:, :, 1], ref)
    assert out.min() == 0 and out.max() == 255


def test_read_gray16_constant_is_zero(tmp_path):
    out = read_frame(_write(tmp_path / "c.png", np.full((48, 64), 1234, np.uint16)))
    assert out.shape == (48, 64, 3) and not out.any()


def test_read_colour_bgr_to_rgb(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = read_frame(_write(tmp_path / "c.png", rgb[:, :, ::-1].copy()))
    np.testing.assert_array_equal(out, rgb)


def test_read_bgra_drops_alpha(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    bgra = np.dstack([rgb[:, :, ::-1], rng.integers(0, 256, (48, 64), dtype=np.uint8)])
    out = read_frame(_write(tmp_path / "a.png", bgra))
    assert out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, rgb)


def test_read_colour16_div257(tmp_path):
    rgb16 = np.random.default_rng(4).integers(0, 65536, (48, 64, 3)).astype(np.uint16)
    out = read_frame(_write(tmp_path / "c16.png", rgb16[:, :, ::-1].copy()))
    np.testing.assert_array_equal(out, np.rint(rgb16 / 257.0).astype(np.uint8))


def test_read_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_frame(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png.*0 bytes"):
        read_frame(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="junk.png"):
        read_frame(tmp_path / "junk.png")


def _grid(h=48, w=64):
    """frame[y, x] = (y, x, 7) so a crop's coordinates can be read off its pixels."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.dstack([yy, xx, np.full_like(yy, 7)]).astype(np.uint8)


def test_crop_box_margin():
    f = _grid()
    c = crop_box(f, (10, 10, 30, 20), margin=0.5)  # w 20 -> +-10, h 10 -> +-5
    np.testing.assert_array_equal(c, f[5:25, 0:40])
    np.testing.assert_array_equal(crop_box(f, (10, 10, 30, 20), margin=0.0), f[10:20, 10:30])


def test_crop_box_clips_at_frame_edge():
    f = _grid()
    c = crop_box(f, (50, 0, 64, 10), margin=0.5)  # x 43..71 -> 64, y -5 -> 0..15
    np.testing.assert_array_equal(c, f[0:15, 43:64])
    c = crop_box(f, (60, 40, 80, 60), margin=0.0)  # partly outside
    np.testing.assert_array_equal(c, f[40:48, 60:64])


@pytest.mark.parametrize("box", [(70, 10, 90, 20), (-20, -20, 0, 0), (10, 50, 20, 60)])
def test_crop_box_outside_raises(box):
    with pytest.raises(ValueError, match="outside"):
        crop_box(_grid(), box, 0.1)


@pytest.mark.parametrize("box", [(10, 10, 10, 20), (10, 20, 30, 20), (30, 10, 20, 20)])
def test_crop_box_zero_area_raises(box):
    with pytest.raises(ValueError, match=r"zero or negative area"):
        crop_box(_grid(), box, 0.1)


def test_resize_pad_shrink_landscape_geometry():
    img = np.full((10, 20, 3), (200, 100, 50), np.uint8)
    out = resize_pad(img, 8)  # -> 4 x 8, centred: rows 2..5
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert not out[:2].any() and not out[6:].any()
    np.testing.assert_array_equal(out[2:6], np.broadcast_to(np.array([200, 100, 50], np.uint8), (4, 8, 3)))


def test_resize_pad_grow_portrait_geometry():
    img = np.full((6, 3, 3), 77, np.uint8)
    out = resize_pad(img, 12)  # -> 12 x 6, centred: cols 3..8
    assert out.shape == (12, 12, 3)
    assert not out[:, :3].any() and not out[:, 9:].any()
    assert (out[:, 3:9] == 77).all()


def test_resize_pad_odd_padding_and_values():
    img = np.random.default_rng(0).integers(0, 256, (5, 16, 3), dtype=np.uint8)
    out = resize_pad(img, 16)  # no resize; 11 rows of padding: 5 above, 6 below
    np.testing.assert_array_equal(out[5:10], img)
    assert not out[:5].any() and not out[10:].any()
    big = resize_pad(np.full((100, 50, 3), 255, np.uint8), 32)
    assert big.max() == 255 and big.shape == (32, 32, 3)


def test_resize_pad_interpolation_choice(monkeypatch):
    seen = []
    real = cv2.resize

    def spy(img, dsize, interpolation):
        seen.append(interpolation)
        return real(img, dsize, interpolation=interpolation)

    monkeypatch.setattr(images.cv2, "resize", spy)
    resize_pad(np.zeros((40, 20, 3), np.uint8), 10)
    resize_pad(np.zeros((4, 2, 3), np.uint8), 10)
    assert seen == [cv2.INTER_AREA, cv2.INTER_LINEAR]


def test_load_crops_decodes_each_frame_once_and_caches(tiny_layout, monkeypatch):
    clear_crop_cache()
    man = load_dfu(tiny_layout, DataConfig())
    calls = []
    real = images.read_frame
    monkeypatch.setattr(images, "read_frame", lambda p: calls.append(p) or real(p))
    x = load_crops(man, "depth_rgb", 16, 0.15)
    assert x.shape == (len(man), 16, 16, 3) and x.dtype == np.uint8
    assert len(calls) == man.samples.depth_rgb_path.nunique() < len(man)  # the 2-box frame is decoded once
    # crop content equals the independent computation
    i = 1
    frame = real(man.samples.depth_rgb_path.iloc[i])
    np.testing.assert_array_equal(x[i], resize_pad(crop_box(frame, man.box("depth_rgb", i), 0.15), 16))
    y = load_crops(man, "depth_rgb", 16, 0.15)
    assert y is x and len(calls) == man.samples.depth_rgb_path.nunique()
    assert not y.flags.writeable
    load_crops(man, "depth_rgb", 16, 0.3)
    assert len(calls) > man.samples.depth_rgb_path.nunique()  # another margin: new entry
    clear_crop_cache()


def test_load_crops_bad_box_names_sample(tiny_layout):
    clear_crop_cache()
    man = load_dfu(tiny_layout, DataConfig())
    man.samples.loc[0, "thermal_map_xmin"] = 500
    man.samples.loc[0, "thermal_map_xmax"] = 600
    with pytest.raises(ValueError, match=man.samples.sample_id.iloc[0]):
        load_crops(man, "thermal_map", 16, 0.1)


def test_parallel_decode_is_bit_identical_to_serial(tiny_layout, monkeypatch):
    """Threads write disjoint rows of one array; any order of completion gives the serial bytes."""
    import threading
    import time

    man = load_dfu(tiny_layout, DataConfig())
    clear_crop_cache()
    serial = load_crops(man, "thermal_map", 16, 0.15, workers=1)
    clear_crop_cache()
    threads, real = set(), images._decode

    def slow_first(path, cfg):  # the first frame finishes last, so completion order differs from frame order
        threads.add(threading.current_thread().name)
        if path == man.samples.thermal_map_path.iloc[0]:
            time.sleep(0.2)
        return real(path, cfg)

    monkeypatch.setattr(images, "_decode", slow_first)
    parallel = load_crops(man, "thermal_map", 16, 0.15, workers=4)
    assert parallel.tobytes() == serial.tobytes() and parallel.shape == serial.shape
    assert len(threads) > 1 and all(t.startswith("decode-thermal_map") for t in threads)
    assert load_crops(man, "thermal_map", 16, 0.15) is parallel  # held once: later calls get the same array
    clear_crop_cache()


def test_parallel_decode_reports_the_first_bad_frame_in_manifest_order(tiny_layout):
    clear_crop_cache()
    man = load_dfu(tiny_layout, DataConfig())
    for i in (0, 2):
        man.samples.loc[i, "depth_rgb_xmin"], man.samples.loc[i, "depth_rgb_xmax"] = 900, 990
    with pytest.raises(ValueError, match=repr(man.samples.sample_id.iloc[0])):
        load_crops(man, "depth_rgb", 16, 0.1, workers=4)
    clear_crop_cache()
