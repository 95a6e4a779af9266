"""16-bit maps in physical units (data/maps.py): hand-computed values, invariances, skips, box mapping."""

import dataclasses
import logging

import cv2
import numpy as np
import pytest

from medfusion.config import DataConfig, DepthMapConfig, MapsConfig, ThermalMapConfig
from medfusion.data import images
from medfusion.data.dfu import load_dfu
from medfusion.data.images import clear_crop_cache, crop_box, load_crops, read_frame, resize_pad
from medfusion.data.maps import NO_DATA, map_box, map_crop, map_problem
from tests.data.conftest import B1

DEPTH, THERMAL = DepthMapConfig(), ThermalMapConfig()
BOX = (10, 10, 20, 20)  # ring 0.5: x, y in 5..25; crop margin 0.15: 8..22


def _skin(value=1000, shape=(40, 40)):
    return np.full(shape, value, np.uint16)


def test_known_depth_values_map_to_the_documented_levels():
    f = _skin()
    f[12, 12], f[12, 13], f[12, 14], f[12, 15], f[12, 16] = 1012, 1030, 970, 1100, 0
    out = map_crop(f, BOX, 0.15, DEPTH)  # crop starts at (8, 8)
    # 1 + rint((v - skin + 30) / 60 * 254): skin -> 128, +12 mm -> 1 + rint(177.8) = 179, +-30 mm -> 255 / 1
    assert out[0, 0] == 128
    assert (out[4, 4], out[4, 5], out[4, 6], out[4, 7]) == (179, 255, 1, 255)  # +70 mm is clipped to 255
    assert out[4, 8] == NO_DATA == 0  # an invalid pixel is "no data", not 0 mm
    assert out.shape == (14, 14) and out.dtype == np.uint8


def test_known_thermal_values_relative_and_absolute():
    f = _skin(3000)  # 30.00 degC skin, centi-degrees
    f[12, 12], f[12, 13] = 3200, 2500  # +2 degC, -5 degC
    rel = map_crop(f, BOX, 0.15, THERMAL)  # 1 + rint((d + 5) / 10 * 254)
    assert (rel[0, 0], rel[4, 4], rel[4, 5]) == (128, 179, 1)
    ab = map_crop(f, BOX, 0.15, dataclasses.replace(THERMAL, rule="absolute"))  # [20, 40] degC
    assert (ab[0, 0], ab[4, 4], ab[4, 5]) == (1 + 127, 1 + round(0.6 * 254), 1 + round(0.25 * 254))


def _textured(seed=0, shape=(60, 60), invalid=0.1):
    rng = np.random.default_rng(seed)
    f = rng.integers(900, 1100, shape).astype(np.uint16)
    f[rng.random(shape) < invalid] = 0
    return f


@pytest.mark.parametrize("mc", [DEPTH, dataclasses.replace(THERMAL, invalid_value=0)], ids=["depth", "thermal"])
def test_crop_is_bit_for_bit_unchanged_by_a_constant_offset(mc):
    f = _textured()
    g = f.copy()
    g[f != 0] += 1234  # the whole scene 1.234 m further away (or 12.34 degC warmer)
    np.testing.assert_array_equal(map_crop(f, BOX, 0.15, mc), map_crop(g, BOX, 0.15, mc))


def test_crop_is_unchanged_by_an_object_outside_the_ring():
    f = _textured()
    g = f.copy()
    g[30:60, 30:60] = 3000  # the floor behind the foot, outside box + ring (5..25)
    g[0:4, :] = 0  # a band of invalid pixels
    for rule in ("relative", "absolute"):
        mc = dataclasses.replace(DEPTH, rule=rule)
        np.testing.assert_array_equal(map_crop(f, BOX, 0.15, mc), map_crop(g, BOX, 0.15, mc))
    mm = dataclasses.replace(DEPTH, rule="minmax_frame")  # the first release's rule does change: why it went
    assert not np.array_equal(map_crop(f, BOX, 0.15, mm), map_crop(g, BOX, 0.15, mm))


def test_invalid_pixels_never_count_as_zero_mm():
    f = _skin()
    f[5:25:2, :] = 0  # half the ring's rows invalid: counted as 0 mm they would move the median to ~500
    f[12, 13] = 1012
    out = map_crop(f, BOX, 0.15, DEPTH)
    assert out[4, 5] == 179 and out[0, 0] == 128  # skin is still 1000 mm
    assert (out[1::2] == NO_DATA).all() and (out[::2] > 0).all()  # crop row k is frame row 8 + k


@pytest.mark.parametrize("frame,reason", [
    (np.full((40, 40), 1234, np.uint16), "map_constant"),
    (np.zeros((40, 40), np.uint16), "map_box_no_data"),
])
def test_unusable_maps_are_named(frame, reason):
    assert map_problem(frame, BOX, 0.15, DEPTH) == reason
    with pytest.raises(ValueError, match=reason):
        map_crop(frame, BOX, 0.15, DEPTH)


def test_a_ring_without_valid_pixels_is_named():
    f = np.zeros((40, 40), np.uint16)
    f[10:20, 10:20] = 1000 + np.arange(10)
    assert map_problem(f, BOX, 0.15, DEPTH) == "map_ring_no_data"
    assert map_problem(f, (100, 100, 110, 110), 0.15, DEPTH) == "map_box_outside"


def test_map_box_by_size_ratio_and_transform():
    assert map_box((10, 10, 30, 30), (64, 48), (64, 48), DEPTH) == (10, 10, 30, 30)
    assert map_box((10, 10, 30, 30), (64, 48), (32, 24), DEPTH) == (5, 5, 15, 15)
    mc = dataclasses.replace(DEPTH, box_scale=(0.5, 0.5), box_margin_px=3)  # about the centre (32, 24)
    assert map_box((10, 10, 30, 30), (64, 48), (64, 48), mc) == (32 - 11 - 3, 24 - 7 - 3, 32 - 1 + 3, 24 + 3 + 3)


# ----------------------------------------------------------------------------- through the loader


def _write16(path, img):
    assert cv2.imwrite(str(path), img.astype(np.uint16))


def _smooth_map(wh):
    """Skin at 1000 mm with a wound 12 mm deeper over B1 (colour-frame pixels 10..30), at any resolution."""
    w, h = wh
    yy, xx = np.mgrid[0:h, 0:w] * (64 / w)
    bump = np.exp(-(((xx - 20) / 6) ** 2 + ((yy - 20) / 6) ** 2))
    return 1000 + np.rint(12 * bump + xx / 8)


def test_half_resolution_depth_map_gives_the_same_crop(tiny_layout, caplog):
    root = tiny_layout
    names = sorted(p.name for p in (root / "depth_map").iterdir())
    for n in names:
        _write16(root / "depth_map" / n, _smooth_map((64, 48)))
    clear_crop_cache()
    full = load_crops(load_dfu(root, DataConfig()), "depth_map", 16, 0.15).copy()
    for n in names:
        _write16(root / "depth_map" / n, _smooth_map((32, 24)))
    clear_crop_cache()
    with caplog.at_level(logging.INFO):
        man = load_dfu(root, DataConfig())
    half = load_crops(man, "depth_map", 16, 0.15)
    i = int(np.flatnonzero(man.samples.depth_rgb_xmin.to_numpy() == B1[0])[0])
    assert man.box("depth_map", i) == tuple(v // 2 for v in B1) and man.box("depth_rgb", i) == B1
    mapping = man.report["map_boxes"]["depth_map"]["mapping"]  # every box, also of frames skipped later
    assert list(mapping) == ["size_ratio"] and mapping["size_ratio"] >= len(man)
    assert "depth_map boxes mapped from the colour frame (size_ratio)" in caplog.text
    # boxes with even coordinates map exactly (an odd one rounds outwards by a pixel: another crop)
    even = (man.samples.depth_rgb_xmin.to_numpy() == B1[0]) & (man.samples.depth_rgb_xmax.to_numpy() == B1[2])
    diff = np.abs(full[even].astype(int) - half[even].astype(int))
    assert even.sum() >= 3 and diff.mean() < 2 and diff.max() <= 8, (diff.mean(), diff.max())
    clear_crop_cache()


def test_constant_and_dead_maps_are_named_skips(tiny_layout):
    root = tiny_layout
    _write16(root / "depth_map" / "2_P003011BDLZ.png", np.full((48, 64), 1500))
    _write16(root / "depth_map" / "3_P012001ADRZ.png", np.zeros((48, 64)))
    man = load_dfu(root, DataConfig())
    sk = man.report["skipped"]
    assert sk["map_constant"] == {"count": 1, "examples": ["2_P003011BDLZ.png"]}
    assert sk["map_box_no_data"] == {"count": 1, "examples": ["3_P012001ADRZ.png"]}
    assert not man.samples.depth_rgb_path.str.contains("2_P003011BDLZ|3_P012001ADRZ").any()


def test_rule_from_the_config_reaches_load_crops(tiny_layout):
    cfg = DataConfig(maps=MapsConfig(depth_map=DepthMapConfig(rule="minmax_frame")))
    man = load_dfu(tiny_layout, cfg)
    clear_crop_cache()
    x = load_crops(man, "depth_map", 16, 0.15)
    p = man.samples.depth_map_path.iloc[0]
    old = resize_pad(crop_box(read_frame(p), man.box("depth_map", 0), 0.15), 16)  # the first release's crop
    np.testing.assert_array_equal(x[0], old)
    rel = load_crops(man, "depth_map", 16, 0.15, maps=MapsConfig())
    assert not np.array_equal(rel[0], old)
    clear_crop_cache()


def test_eight_bit_maps_keep_the_rendered_path(tiny_layout):
    p = tiny_layout / "thermal_map" / "11_P003001ATMW.png"
    img = (np.arange(64)[None, :] * 3 + np.zeros((48, 1), int)).astype(np.uint8)
    assert cv2.imwrite(str(p), img)
    man = load_dfu(tiny_layout, DataConfig())
    clear_crop_cache()
    x = load_crops(man, "thermal_map", 16, 0.15)
    i = int(np.flatnonzero(man.samples.thermal_map_path.str.endswith("11_P003001ATMW.png"))[0])
    np.testing.assert_array_equal(x[i], resize_pad(crop_box(images.read_frame(p), man.box("thermal_map", i), 0.15), 16))
    clear_crop_cache()
