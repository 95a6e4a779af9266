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


def test_eval_dataset_is_one_ordered_pass_in_pixel_units():
    images = np.full((5, 4, 4, 3), 200, dtype=np.uint8)
    out = np.concatenate([x["depth_rgb"].numpy() for x in eval_dataset({"depth_rgb": images}, None, 2)])
    assert out.shape == (5, 4, 4, 3) and out.max() == 200.0  # no normalisation: backbones rescale
