"""BatchDataset with paddle.io.DataLoader: ready batches (batch_size=None), worker sharding without duplicates."""
import numpy as np
import paddle
import pytest

from ctrkit.data import FeatureSpec, iter_batches
from ctrkit.data.paddle_dataset import BatchDataset

SPEC = FeatureSpec()


def rows_of(batches) -> list[tuple]:
    return sorted(tuple(row) for b in batches for row in np.asarray(b[1]).tolist())


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_dataloader_yields_every_row_once(slot_sample, raw_sample, num_workers):
    files = [slot_sample, raw_sample]
    expected = list(iter_batches(files, SPEC, 16, block_bytes=2048))
    dataset = BatchDataset(files, SPEC, 16, block_bytes=2048)
    loader = paddle.io.DataLoader(dataset, batch_size=None, num_workers=num_workers)
    got = [batch for batch in loader]  # (list(loader) asks len(), which an IterableDataset has not)
    assert all(isinstance(t, paddle.Tensor) for t in got[0]) and len(got[0]) == 3
    dense, sparse, label = got[0]
    assert dense.shape == [16, 13] and dense.dtype == paddle.float32
    assert sparse.dtype == paddle.int64 and label.shape == [16, 1]
    assert rows_of(got) == rows_of([(b.dense, b.sparse) for b in expected])
    if num_workers <= 1:  # one reader: the file order is kept
        np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in got]),
                                      np.concatenate([b.sparse for b in expected]))


def test_dataset_combines_its_shard_with_the_workers(slot_sample, raw_sample):
    files = [slot_sample, raw_sample]
    seen = []
    for rank in range(2):
        dataset = BatchDataset(files, SPEC, 8, shard_index=rank, shard_count=2, block_bytes=1024)
        seen += rows_of(paddle.io.DataLoader(dataset, batch_size=None, num_workers=2))
    assert sorted(seen) == rows_of([(b.dense, b.sparse) for b in iter_batches(files, SPEC, 100)])


def test_unlabeled_data_gives_two_tensors(tmp_path, slot_sample):
    with open(slot_sample) as f:
        lines = [line.split(" ", 1)[1] for line in f]
    path = tmp_path / "u.txt"
    path.write_text("".join(lines))
    [batch] = [b for b in paddle.io.DataLoader(BatchDataset(str(path), SPEC, 100), batch_size=None)]
    assert len(batch) == 2 and batch[0].shape == [80, 13]


def test_schema_without_numeric_fields_through_workers(tmp_path):
    """A schema with no numeric fields has dense [B, 0], which the DataLoader's queue cannot carry: BatchDataset
    sends a [B, 1] placeholder and restore_dense gives [B, 0] back, with the same ids and labels."""
    from ctrkit.data.paddle_dataset import restore_dense
    from ctrkit.data.synthetic_schema import generate_schema_dataset
    from ctrkit.schema import FeatureSchema

    schema = FeatureSchema.from_dict({"name": "ids_only", "format": "csv", "header": True, "label": "click",
                                      "categorical": ["a", "b"],
                                      "multi_valued": [{"name": "tags", "max_len": 3}]}, key="dataset")
    generate_schema_dataset(str(tmp_path / "d"), schema, 500, 1)
    expected = list(iter_batches(str(tmp_path / "d"), schema, 64))
    loader = paddle.io.DataLoader(BatchDataset(str(tmp_path / "d"), schema, 64), batch_size=None, num_workers=1)
    got = list(restore_dense(iter(loader), schema.n_dense))
    assert len(got) == len(expected)
    for (dense, sparse, label), batch in zip(got, expected):
        assert dense.shape == [len(batch.sparse), 0] and sparse.shape == [len(batch.sparse), 5]
        assert np.array_equal(sparse.numpy(), batch.sparse) and np.array_equal(label.numpy(), batch.label)
