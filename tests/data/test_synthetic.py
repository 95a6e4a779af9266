import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from medfusion.config import DataConfig, DepthMapConfig, MapsConfig, ThermalMapConfig
from medfusion.constants import CLASSES
from medfusion.data.dfu import load_dfu
from medfusion.data.images import clear_crop_cache, load_crops, read_frame
from medfusion.data.synthetic import ORACLE_MODALITIES, ensure_demo, generate_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default demo (120 patients, seed 7): about 30 s to generate, so its tests are marked slow."""
    t = time.time()
    root = generate_demo(tmp_path_factory.mktemp("demo") / "demo", seed=7, n_patients=120)
    return root, time.time() - t


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """The fast equivalent: same generator and seed, 24 patients (about 100 samples)."""
    t = time.time()
    root = generate_demo(tmp_path_factory.mktemp("demo") / "small", seed=7, n_patients=24)
    return root, time.time() - t


def _qwk(oracle, prefix=""):
    p = oracle[[f"{prefix}p_{c}" for c in CLASSES]].to_numpy()
    return cohen_kappa_score(oracle["label"], p.argmax(1), weights="quadratic")


@pytest.mark.slow
def test_oracle_acceptance_default_demo(demo):
    _check_oracle(*demo)
    man = load_dfu(demo[0], DataConfig())
    assert 100 <= man.report["n_patients"] <= 120  # every generated patient, less the few left without a view
    frac = np.bincount(man.labels, minlength=3) / len(man)  # near the real balance I 31%, P 56%, R 13%
    assert abs(frac[0] - 0.31) < 0.08 and abs(frac[1] - 0.56) < 0.08 and abs(frac[2] - 0.13) < 0.06


def test_oracle_acceptance_small_demo(small_demo):
    _check_oracle(*small_demo)


def _check_oracle(root, seconds):
    o = pd.read_csv(root / "oracle.csv")
    assert list(o.columns[:5]) == ["sample_id", "label", "p_I", "p_P", "p_R"]
    all_q = _qwk(o)
    singles = {m: _qwk(o, m + "_") for m in ORACLE_MODALITIES}
    print(f"demo generated in {seconds:.1f}s; oracle QWK all {all_q:.3f}, singles {singles}")
    assert 0.65 <= all_q <= 0.90
    for m, q in singles.items():
        assert q <= all_q - 0.10, (m, q, all_q)
    np.testing.assert_allclose(o[[f"depth_map_p_{c}" for c in CLASSES]], o[[f"depth_rgb_p_{c}" for c in CLASSES]])
    np.testing.assert_allclose(o[[f"thermal_rgb_p_{c}" for c in CLASSES]],
                               o[[f"thermal_map_p_{c}" for c in CLASSES]])
    np.testing.assert_allclose(o[["p_I", "p_P", "p_R"]].sum(axis=1), 1.0, atol=1e-5)


def test_layout_loads_and_matches_oracle(small_demo):
    root, _ = small_demo
    man = load_dfu(root, DataConfig())
    o = pd.read_csv(root / "oracle.csv")
    assert list(o.sample_id) == list(man.samples.sample_id)
    assert (o.label.to_numpy() == man.labels).all()
    assert all(man.report["match_rules"][r] > 0 for r in ("exact", "relax_angle", "relax_zoom", "relax_debridement"))
    assert man.report["duplicate_visits"] >= 1
    for leaky in ("Healing Phase", "Phase Confidence (%)", "Location", "ID"):
        assert leaky not in man.feature_columns
    assert len(man.feature_columns) >= 30
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size < 15e6


def test_files_follow_data_format(small_demo):
    root, _ = small_demo
    raw = (root / "metadata.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfID,Patient#,Appt#,DFU#")
    meta = pd.read_csv(root / "metadata.csv", encoding="utf-8-sig")
    assert meta["Wound Score"].notna().all()
    v0 = meta["Appt#"] == 0
    miss = meta["Wound Centre Temperature (°C)"].isna()
    assert miss[v0].mean() > 0.3 and miss[~v0].mean() < 0.25
    loc = set(meta["Location Grouped (Hallux:1,Toes,Middle,Heel,Ankle:5)"])
    assert {"Hallux", "hallux"} <= loc or {"Heel", "heel"} <= loc
    d = pd.read_csv(root / "bounding_boxes_depth.csv", dtype=str)
    t = pd.read_csv(root / "bounding_boxes_thermal.csv", dtype=str)
    assert t["Patient#"].str.len().eq(3).all() and not d["Patient#"].str.startswith("0").all()
    assert d.columns.tolist() == ["Filename", "Patient#", "Appt#", "DFU#", "DebriStat", "Camera", "Angle",
                                  "Bounding Box Number", "Xmin", "Ymin", "Xmax", "Ymax"]
    assert (d["Bounding Box Number"] == "2").any()
    w = d.Xmax.astype(int) - d.Xmin.astype(int)
    assert w.between(40, 200).all()
    import cv2

    name = sorted((root / "depth_rgb").iterdir())[0].name
    assert cv2.imread(str(root / "depth_rgb" / name), cv2.IMREAD_UNCHANGED).shape == (720, 1280, 3)
    dm = cv2.imread(str(root / "depth_map" / name), cv2.IMREAD_UNCHANGED)
    assert dm.shape == (720, 1280) and dm.dtype == np.uint16
    tname = sorted((root / "thermal_map").iterdir())[0].name
    tm = cv2.imread(str(root / "thermal_map" / tname), cv2.IMREAD_UNCHANGED)
    assert tm.shape == (1440, 1080) and tm.dtype == np.uint16
    assert read_frame(root / "thermal_rgb" / tname).shape == (1440, 1080, 3)


def _wound_contrast(x: np.ndarray) -> np.ndarray:
    """Wound centre minus the surrounding skin (crop pixels near the edge that are not padding / no data)."""
    yy, xx = np.mgrid[0:32, 0:32]
    edge = np.hypot(yy - 15.5, xx - 15.5) > 12
    centre = x[:, 13:19, 13:19, 0].mean(axis=(1, 2))
    return centre - np.array([xi[edge & (xi.max(-1) > 0), 0].mean() for xi in x.astype(float)])


def test_image_encoding_survives_crop_resize(small_demo):
    """The wound's contrast with its skin in a 32 px crop is monotone in the modality's latent (via its
    oracle); the maps' default `relative` rule makes the wound centre alone monotone."""
    root, _ = small_demo
    clear_crop_cache()
    man = load_dfu(root, DataConfig()).subset(np.arange(60))
    o = pd.read_csv(root / "oracle.csv").iloc[:60]
    for m in ("depth_rgb", "depth_map", "thermal_rgb", "thermal_map"):
        x = load_crops(man, m, 32, 0.15)
        score = (o[f"{m}_p_R"] - o[f"{m}_p_I"]).rank()  # monotone in z
        rho = pd.Series(_wound_contrast(x)).rank().corr(score)
        assert rho > 0.95, (m, rho)
        if m.endswith("_map"):
            assert pd.Series(x[:, 13:19, 13:19, 0].mean(axis=(1, 2))).rank().corr(score) > 0.95, m
    clear_crop_cache()


def test_frames_vary_like_real_frames(small_demo):
    """Distance, room temperature and objects vary, so a whole-frame min-max (`minmax_frame`) loses the signal
    that the `relative` rule keeps; one dead depth map is a named skip."""
    import cv2

    root, _ = small_demo
    man = load_dfu(root, DataConfig())
    assert man.report["skipped"]["map_box_no_data"]["count"] == 1
    skin = []
    for i in range(20):
        dm = cv2.imread(man.samples.depth_map_path.iloc[i], cv2.IMREAD_UNCHANGED)
        x0, y0, x1, y1 = man.box("depth_map", i)
        ring = dm[max(0, y0 - 10):y1 + 10, max(0, x0 - 10):x0]
        skin.append(np.median(ring[ring > 0]))
        assert (dm == 0).mean() > 0.001  # scattered invalid pixels
    assert np.ptp(skin) > 300  # the camera distance moves the skin by hundreds of mm
    clear_crop_cache()
    sub = man.subset(np.arange(60))
    o = pd.read_csv(root / "oracle.csv").iloc[:60]
    old = MapsConfig(DepthMapConfig(rule="minmax_frame"), ThermalMapConfig(rule="minmax_frame"))
    x = load_crops(sub, "depth_map", 32, 0.15, maps=old)
    rho = pd.Series(x[:, 13:19, 13:19, 0].mean(axis=(1, 2))).rank().corr((o["depth_map_p_R"] - o["depth_map_p_I"]).rank())
    assert rho < 0.6, rho
    clear_crop_cache()


def test_deterministic_and_ensure_does_not_overwrite(tmp_path):
    a = generate_demo(tmp_path / "a", seed=3, n_patients=10)
    b = ensure_demo(tmp_path / "b", seed=3, n_patients=10)
    for f in ("metadata.csv", "oracle.csv", "bounding_boxes_depth.csv", "bounding_boxes_thermal.csv"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    names = sorted(p.name for p in (a / "thermal_map").iterdir())
    assert names == sorted(p.name for p in (b / "thermal_map").iterdir())
    assert (a / "thermal_map" / names[0]).read_bytes() == (b / "thermal_map" / names[0]).read_bytes()
    # ensure_demo leaves an existing dataset alone
    (b / "metadata.csv").write_text("sentinel")
    ensure_demo(b, seed=99, n_patients=10)
    assert (b / "metadata.csv").read_text() == "sentinel"
    with pytest.raises(FileExistsError):
        generate_demo(b)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_an_older_demo_folder_is_used_with_a_warning_never_overwritten(tmp_path, caplog):
    from medfusion.data.synthetic import DEMO_STAMP, ensure_demo

    root = generate_demo(tmp_path / "demo", seed=4, n_patients=10)
    assert json.loads((root / DEMO_STAMP).read_text())["n_patients"] == 10
    with caplog.at_level("INFO", logger="medfusion.data.synthetic"):
        ensure_demo(root, seed=4, n_patients=10)
    assert "not regenerated" in caplog.text and "older medfusion" not in caplog.text
    (root / DEMO_STAMP).unlink()  # as a folder made before the stamp existed
    before = (root / "metadata.csv").read_bytes()
    caplog.clear()
    with caplog.at_level("WARNING", logger="medfusion.data.synthetic"):
        ensure_demo(root, seed=4, n_patients=120)
    assert "older medfusion (no demo.json)" in caplog.text and "delete the folder to regenerate it" in caplog.text
    assert (root / "metadata.csv").read_bytes() == before  # used as it is


# sha256 over the relative file names, the CSV / JSON bytes and every frame's decoded pixels (shape, dtype, values) of
# generate_demo(seed=7, n_patients=24), as written by the generator of commit b7de199 (before synthetic.py was split
# into synthetic_frames.py / synthetic_metadata.py). Pixels rather than PNG bytes: another zlib build may compress the
# same pixels differently. A change here is a change of the demo: bump DEMO_GENERATOR and re-pin.
SMALL_DEMO_DIGEST = "4b10e12885d0df6444b412bfbd4e725d24c783516c45d4b6b36166d1ce34fab8"


def _demo_digest(root) -> str:
    import hashlib

    import cv2

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        h.update(str(p.relative_to(root)).encode())
        if p.suffix == ".png":
            img = cv2.imdecode(np.fromfile(str(p), np.uint8), cv2.IMREAD_UNCHANGED)
            h.update(str((img.shape, img.dtype.str)).encode() + img.tobytes())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


def test_demo_content_is_pinned(small_demo):
    from medfusion.data.synthetic import DEMO_GENERATOR

    assert DEMO_GENERATOR == 2
    assert _demo_digest(small_demo[0]) == SMALL_DEMO_DIGEST


def test_a_study_larger_than_the_demo_draws_patient_numbers_from_every_3_digit_number():
    """bench/peak_rss.sh needs ~630 patients; the demo's own draw (<= 299 patients) must stay the first release's."""
    from medfusion.data.synthetic import _patient_numbers

    first_release = np.sort(np.random.default_rng(7).choice(np.arange(1, 300), size=120, replace=False))
    np.testing.assert_array_equal(_patient_numbers(np.random.default_rng(7), 120), first_release)
    large = _patient_numbers(np.random.default_rng(7), 630)
    assert len(set(large)) == 630 and large.min() >= 1 and large.max() <= 999 and large.max() > 299
    assert np.all(np.diff(large) > 0)
    with pytest.raises(ValueError, match="1 to 999 patients"):
        _patient_numbers(np.random.default_rng(7), 1000)
