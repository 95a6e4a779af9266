"""The training stream is a pure function of (seed, step): the basis of reproducible and resumable fits."""

import numpy as np
import pytest

from medfusion.data.pipeline import plan_batches, train_dataset


def _data(n=37):
    x = (np.arange(n)[:, None, None, None] * np.ones((1, 4, 4, 3))).astype(np.uint8)  # image i is constant i
    return {"depth_rgb": x}, np.arange(n) % 3


def _ids(batch) -> list[int]:
    return batch[0]["depth_rgb"].numpy()[:, 0, 0, 0].astype(int).tolist()


def test_every_iterator_yields_the_same_stream():
    # Keras' fit opens a throw-away iterator to peek at the shapes before the training one; with
    # shuffle(reshuffle_each_iteration=True) iterators share a seed generator, so the second saw
    # another order (by a timing-dependent amount, which made runs differ between processes).
    x, y = _data()
    ds = train_dataset(x, y, plan_batches(37, 16, 1), seed=5, augment=True)
    first = iter(ds)
    a = [next(first) for _ in range(3)]
    second = iter(ds)
    b = [next(second) for _ in range(9)]
    a += [next(first) for _ in range(6)]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u[0]["depth_rgb"].numpy(), v[0]["depth_rgb"].numpy())
        np.testing.assert_array_equal(u[1].numpy(), v[1].numpy())


def test_start_step_continues_the_stream_and_each_pass_is_a_permutation():
    x, y = _data()
    plan = plan_batches(37, 16, 1)
    full = list(train_dataset(x, y, plan, seed=5, augment=True).take(12))
    for start in (1, 3, 7):
        tail = list(train_dataset(x, y, plan, seed=5, augment=True, start_step=start).take(12 - start))
        for u, v in zip(full[start:], tail):
            np.testing.assert_array_equal(u[0]["depth_rgb"].numpy(), v[0]["depth_rgb"].numpy())
    ids = np.concatenate([_ids(b) for b in full])  # batches run on across pass boundaries
    passes = [ids[i * 37:(i + 1) * 37] for i in range(len(ids) // 37)]
    assert all(sorted(p.tolist()) == list(range(37)) for p in passes)
    assert len({tuple(p) for p in passes}) == len(passes)  # reshuffled every pass
    other = np.concatenate([_ids(b) for b in train_dataset(x, y, plan, seed=6, augment=True).take(3)])
    assert not np.array_equal(other, ids[:len(other)])  # and the order depends on the seed


def _images(n=8, size=12):
    """Distinct positive pixel values, so a moved or new pixel is visible."""
    return {"depth_rgb": (np.arange(n * size * size * 3) % 250 + 1).reshape(n, size, size, 3).astype(np.uint8)}


@pytest.mark.parametrize("ops", [("flip",), ("rotate",), ("shift",), ("zoom",), ("flip", "rotate", "shift", "zoom")])
def test_augmentation_is_a_function_of_seed_and_step(ops):
    x, y = _images(), np.arange(8) % 3
    plan = plan_batches(8, 4, 1)
    a = [b[0]["depth_rgb"].numpy() for b in train_dataset(x, y, plan, seed=3, augment=list(ops)).take(4)]
    b = [b[0]["depth_rgb"].numpy() for b in train_dataset(x, y, plan, seed=3, augment=list(ops), start_step=2).take(2)]
    for u, v in zip(a[2:], b):  # a resumed stream sees the same augmentation at the same step
        np.testing.assert_array_equal(u, v)
    plain = [b[0]["depth_rgb"].numpy() for b in train_dataset(x, y, plan, seed=3, augment=[]).take(4)]
    assert any(not np.array_equal(u, p) for u, p in zip(a, plain))  # it does change images
    allowed = set(np.unique(x["depth_rgb"]).astype(np.float32).tolist()) | {0.0}
    assert all(set(np.unique(u).tolist()) <= allowed for u in a)  # nearest + 0 fill: no new intensity


def test_augment_true_is_flip_and_false_is_none():
    x, y = _images(), np.arange(8) % 3
    plan = plan_batches(8, 4, 1)
    for old, new in ((True, ["flip"]), (False, [])):
        u = [b[0]["depth_rgb"].numpy() for b in train_dataset(x, y, plan, seed=1, augment=old).take(3)]
        v = [b[0]["depth_rgb"].numpy() for b in train_dataset(x, y, plan, seed=1, augment=new).take(3)]
        for p, q in zip(u, v):
            np.testing.assert_array_equal(p, q)


def test_geometric_identity_and_a_hand_computed_shift(monkeypatch):
    import tensorflow as tf

    from medfusion.data import pipeline

    img = tf.constant(np.arange(1, 5 * 6 + 1, dtype=np.float32).reshape(1, 5, 6, 1))
    base = tf.constant([0, 0], tf.int64)
    np.testing.assert_array_equal(pipeline._geometric(img, base, ()).numpy(), img.numpy())
    # a shift of +1/6 of the width moves the image one pixel right; the new left column is 0 (fill)
    monkeypatch.setattr(pipeline, "_uniform", lambda b, n, lo, hi, stream: tf.fill([n], 1 / 6 if stream == 4 else 0.0))
    out = pipeline._geometric(img, base, ("shift",)).numpy()[0, :, :, 0]
    want = np.zeros((5, 6), np.float32)
    want[:, 1:] = img.numpy()[0, :, :5, 0]
    np.testing.assert_array_equal(out, want)


def test_evaluation_never_augments():
    from medfusion.data.pipeline import eval_dataset

    x = _images()
    out = np.concatenate([b["depth_rgb"].numpy() for b in eval_dataset(x, None, 3)])
    np.testing.assert_array_equal(out, x["depth_rgb"].astype(np.float32))
