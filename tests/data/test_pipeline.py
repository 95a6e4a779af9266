import math

import numpy as np
import pytest

from medfusion.data.pipeline import eval_dataset, plan_batches, train_dataset


@pytest.mark.parametrize("n,per_replica,replicas,batch,steps", [
    (100, 16, 1, 16, 7), (100, 16, 2, 32, 4), (10, 16, 1, 10, 1), (10, 8, 2, 10, 1), (33, 16, 2, 32, 2)])
def test_steps_per_epoch_from_each_dataset(n, per_replica, replicas, batch, steps):
    plan = plan_batches(n, per_replica, replicas)
    assert plan.batch == batch and plan.steps_per_epoch == steps
    assert plan.steps_per_epoch == math.ceil(n / plan.batch)
    assert plan.clamped == (per_replica * replicas > n)


def test_plans_are_per_dataset_not_reused():
    train, val = plan_batches(300, 16, 1), plan_batches(40, 16, 1)
    assert (train.steps_per_epoch, val.steps_per_epoch) == (19, 3)


def test_empty_dataset_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        plan_batches(0, 16, 1)


def test_train_dataset_covers_an_epoch_with_a_batch_larger_than_the_data():
    images = np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3)
    labels = np.array([0, 1, 2, 0, 1, 2])
    plan = plan_batches(6, 16, 1)
    ds = train_dataset({"depth_rgb": images}, labels, plan, seed=0, augment=False)
    batches = list(ds.take(plan.steps_per_epoch * 2))
    assert len(batches) == 2 and all(b[0]["depth_rgb"].shape[0] == 6 for b in batches)
    seen = sorted(float(x[0, 0, 0]) for x in batches[0][0]["depth_rgb"].numpy())
    assert seen == sorted(float(x[0, 0, 0]) for x in images.astype(np.float32))  # every sample once
    assert batches[0][0]["depth_rgb"].dtype.name == "float32"


def _distinct(n):
    """n images whose every pixel holds the sample's index (0..n-1), labels cycling 0, 1, 2."""
    images = np.repeat(np.arange(n, dtype=np.uint8), 4 * 4 * 3).reshape(n, 4, 4, 3)
    return images, np.arange(n) % 3


def test_eval_dataset_is_one_ordered_pass_in_pixel_units():
    images, _ = _distinct(5)
    images = images + 196  # 196..200: pixel units, no normalisation (backbones rescale)
    batches = [x["depth_rgb"].numpy() for x in eval_dataset({"depth_rgb": images}, None, 2)]
    assert [len(b) for b in batches] == [2, 2, 1]
    out = np.concatenate(batches)
    assert out.dtype == np.float32 and out.shape == (5, 4, 4, 3)
    assert out[:, 0, 0, 0].tolist() == [196.0, 197.0, 198.0, 199.0, 200.0]  # in order, each once
    np.testing.assert_array_equal(out, images.astype(np.float32))


def test_eval_dataset_with_labels_keeps_images_and_labels_together_in_order():
    images, labels = _distinct(7)
    batches = list(eval_dataset({"depth_rgb": images}, labels, 3))
    assert [len(y) for _, y in batches] == [3, 3, 1]
    xs = np.concatenate([x["depth_rgb"].numpy()[:, 0, 0, 0] for x, _ in batches])
    ys = np.concatenate([y.numpy() for _, y in batches])
    assert xs.tolist() == list(range(7))
    np.testing.assert_array_equal(ys, np.eye(3)[labels])


def test_eval_dataset_for_three_replicas_pads_weight_zero_rows_only_at_the_end():
    images, labels = _distinct(7)
    batches = list(eval_dataset({"depth_rgb": images}, labels, 4, replicas=3))
    # batch 4 rounded up to a multiple of 3 (6); 7 samples padded to 12: two batches of 6
    assert [len(w) for _, _, w in batches] == [6, 6]
    xs = np.concatenate([x["depth_rgb"].numpy()[:, 0, 0, 0] for x, _, _ in batches])
    ws = np.concatenate([w.numpy() for _, _, w in batches])
    ys = np.concatenate([y.numpy() for _, y, _ in batches])
    assert ws.tolist() == [1.0] * 7 + [0.0] * 5
    assert xs[:7].tolist() == list(range(7))  # the real samples, in order, first
    np.testing.assert_array_equal(ys[:7], np.eye(3)[labels])
    # no labels (predict): same padding, and predict() drops the padded rows
    xs = np.concatenate([x["depth_rgb"].numpy()[:, 0, 0, 0]
                         for x in eval_dataset({"depth_rgb": images}, None, 4, replicas=3)])
    assert len(xs) == 12 and xs[:7].tolist() == list(range(7))
