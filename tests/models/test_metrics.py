import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

import medfusion
from medfusion.models.metrics import CohenKappa, score_predictions


def _data(seed, n=97):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    p = rng.random((n, 3)).astype("float32")
    p[np.arange(n), y] += rng.random(n).astype("float32")  # better than chance, not perfect
    return y, p


@pytest.mark.parametrize("weighting,sk", [("quadratic", "quadratic"), ("none", None)])
def test_streaming_kappa_matches_sklearn(weighting, sk):
    y, p = _data(0)
    m = CohenKappa(num_classes=3, weighting=weighting)
    for s in range(0, len(y), 20):  # several uneven batches, one-hot labels
        m.update_state(np.eye(3)[y[s:s + 20]], p[s:s + 20])
    assert float(m.result()) == pytest.approx(cohen_kappa_score(y, p.argmax(1), weights=sk), abs=1e-5)
    m.reset_state()
    m.update_state(y, p)  # integer labels
    assert float(m.result()) == pytest.approx(cohen_kappa_score(y, p.argmax(1), weights=sk), abs=1e-5)


def test_degenerate_one_class_predictor_scores_zero():
    y, _ = _data(1)
    p = np.tile([0.1, 0.8, 0.1], (len(y), 1))
    for w, sk in (("quadratic", "quadratic"), ("none", None)):
        m = CohenKappa(weighting=w)
        m.update_state(y, p)
        assert float(m.result()) == pytest.approx(0.0, abs=1e-7)
        assert cohen_kappa_score(y, p.argmax(1), weights=sk) == pytest.approx(0.0, abs=1e-12)


def test_everything_one_class_on_both_sides_is_zero_not_nan():
    # sklearn leaves this undefined (nan by default); the metric returns 0
    m = CohenKappa()
    m.update_state(np.zeros(6, int), np.tile([0.9, 0.05, 0.05], (6, 1)))
    assert float(m.result()) == 0.0


def test_kappa_config_round_trip():
    m = CohenKappa(num_classes=3, weighting="none", name="kappa")
    clone = CohenKappa.from_config(m.get_config())
    assert clone.weighting == "none" and clone.num_classes == 3 and clone.name == "kappa"


def test_score_predictions_keys_and_absent_class():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0.1, 0.9, 0]])
    s = score_predictions(y, proba)
    assert set(s) == {"qwk", "kappa", "accuracy", "f1_macro", "f1_weighted", "f1_I", "f1_P", "f1_R"}
    assert s["accuracy"] == 0.75 and s["f1_R"] == 0.0
    assert s["qwk"] == pytest.approx(cohen_kappa_score(y, proba.argmax(1), weights="quadratic"))


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from medfusion.models.metrics import CohenKappa

    d = np.load(sys.argv[1])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    with strategy.scope():
        inp = keras.Input((3,), name="scores")
        out = keras.layers.Activation("softmax", name="probs")(inp)  # argmax(output) == argmax(input)
        model = keras.Model(inp, out)
        qwk = CohenKappa(weighting="quadratic", name="qwk")
        model.compile(loss="categorical_crossentropy",
                      metrics=[qwk,
                               CohenKappa(weighting="none", name="kappa")])
    res = model.evaluate(d["x"], np.eye(3, dtype="float32")[d["y"]], batch_size=8, verbose=0, return_dict=True)
    print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync,
                                  "qwk": float(res["qwk"]), "kappa": float(res["kappa"]),
                                  "n": float(np.sum(keras.ops.convert_to_numpy(qwk.confusion)))}))
""")


def test_kappa_under_mirrored_strategy_two_cpu_replicas(tmp_path):
    y, x = _data(3, n=45)  # 45 = 5 full global batches of 8 + a ragged one
    np.savez(tmp_path / "data.npz", x=x, y=y)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    src = os.path.dirname(os.path.dirname(medfusion.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "data.npz")], capture_output=True,
                          text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    assert res["replicas"] == 2
    assert res["n"] == len(y)  # both replicas' counts were summed, none lost
    pred = x.argmax(1)
    assert res["qwk"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-5)
    assert res["kappa"] == pytest.approx(cohen_kappa_score(y, pred), abs=1e-5)
