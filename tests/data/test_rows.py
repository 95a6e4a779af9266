"""Rows: a job's images are read batch by batch from the run's one array, never copied whole."""

import hashlib

import numpy as np
import pytest

from medfusion.data.pipeline import eval_dataset, plan_batches, train_dataset
from medfusion.data.rows import Rows, flip_variant
from medfusion.jobs import fold_inputs


class CountingRows(Rows):
    """Rows that record how many rows each read asked for (a full copy would show as one big read)."""

    reads: list

    def take(self, positions):
        type(self).reads.append(len(np.asarray(positions).reshape(-1)))
        return super().take(positions)


@pytest.fixture()
def images():
    return np.random.default_rng(0).integers(0, 256, (23, 5, 4, 3), dtype=np.uint8)


def test_rows_read_what_fancy_indexing_reads_with_flips_composed(images):
    idx = np.array([7, 3, 3, 22, 0])
    rows = Rows(images, idx)
    np.testing.assert_array_equal(np.asarray(rows), images[idx])
    np.testing.assert_array_equal(rows.take([4, 1]), images[[0, 3]])
    assert rows.shape == (5, 5, 4, 3) and len(rows) == 5 and rows.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(rows.flipped(1)), images[idx][:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(rows.flipped(3)), images[idx][:, ::-1, ::-1])
    np.testing.assert_array_equal(np.asarray(rows.flipped(1).flipped(3)), images[idx][:, ::-1])
    np.testing.assert_array_equal(np.asarray(flip_variant(rows, 2)), flip_variant(images[idx], 2))
    with pytest.raises(IndexError, match="outside an array of 23 rows"):
        Rows(images, [0, 23])


def test_rows_hash_equals_the_hash_of_the_copied_rows(images):
    """The pre-training cache key hashed `crops[tr].tobytes()`; hashing row by row must keep every old key."""
    idx = np.array([5, 1, 9, 9, 2])
    assert Rows(images, idx).sha256() == hashlib.sha256(images[idx].tobytes()).hexdigest()
    flipped = np.ascontiguousarray(images[idx][:, :, ::-1])
    assert Rows(images, idx, flip=1).sha256() == hashlib.sha256(flipped.tobytes()).hexdigest()


def test_fold_inputs_share_the_run_array():
    crops = {"depth_rgb": np.zeros((6, 2, 2, 3), np.uint8)}
    x = fold_inputs(crops, np.array([4, 1]), ["depth_rgb"], np.full((6, 3), 1 / 3)[[4, 1]])
    assert isinstance(x["depth_rgb"], Rows) and x["depth_rgb"].source is crops["depth_rgb"]
    assert x["metadata"].dtype == np.float32 and x["metadata"].shape == (2, 3)


def test_a_training_stream_over_rows_equals_one_over_the_copied_array_and_reads_one_batch_at_a_time(images):
    idx = np.array([20, 2, 11, 5, 7, 13, 1, 8, 17, 3, 0])
    labels = np.arange(len(idx)) % 3
    plan = plan_batches(len(idx), 2, 2)  # global batch 4 on 2 replicas: 3 steps, the last pass runs on
    CountingRows.reads = []
    ds_rows = train_dataset({"depth_rgb": CountingRows(images, idx)}, labels, plan, seed=3, augment=["flip"])
    ds_copy = train_dataset({"depth_rgb": images[idx]}, labels, plan, seed=3, augment=["flip"])
    for (xr, yr), (xc, yc) in zip(ds_rows.take(7), ds_copy.take(7)):
        np.testing.assert_array_equal(xr["depth_rgb"].numpy(), xc["depth_rgb"].numpy())
        np.testing.assert_array_equal(yr.numpy(), yc.numpy())
    assert CountingRows.reads and max(CountingRows.reads) == plan.batch


def test_an_evaluation_pass_over_rows_pads_positions_not_images(images):
    idx = np.array([4, 9, 16, 2, 21, 6, 10])
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    CountingRows.reads = []
    got = list(eval_dataset({"depth_rgb": CountingRows(images, idx)}, labels, 4, replicas=3))
    want = list(eval_dataset({"depth_rgb": images[idx]}, labels, 4, replicas=3))
    assert len(got) == len(want) == 2  # batch 6 (a multiple of 3), 7 samples + 5 weight-0 pads
    for (xr, yr, wr), (xc, yc, wc) in zip(got, want):
        np.testing.assert_array_equal(xr["depth_rgb"].numpy(), xc["depth_rgb"].numpy())
        np.testing.assert_array_equal(yr.numpy(), yc.numpy())
        np.testing.assert_array_equal(wr.numpy(), wc.numpy())
    np.testing.assert_array_equal(np.concatenate([w.numpy() for _, _, w in got]), [1] * 7 + [0] * 5)
    np.testing.assert_array_equal(got[1][0]["depth_rgb"].numpy()[1:], np.repeat(images[idx[:1]], 5, axis=0))
    assert max(CountingRows.reads) == 6
