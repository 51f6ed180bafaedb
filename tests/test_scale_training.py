"""Single-machine training at scale: training and evaluation read shard directories (same answers as the text they
came from), unique id lookups change nothing but speed, and the CPU settings are validated."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from ctrkit.config import ConfigError, load_config
from ctrkit.data import FeatureSpec
from ctrkit.data.synthetic import generate_dataset
from ctrkit.prepare import prepare
from ctrkit.training import UniqueIdLookups, build_optimizer, evaluate, train
from models.registry import build_model, default_config_path

IDS = 100_001
SMALL = ["hyper_parameters.fc_sizes=[32]", f"hyper_parameters.sparse_feature_number={IDS}",
         "runner.print_interval=50", "runner.train_batch_size=512"]
SPEC = FeatureSpec(sparse_feature_number=IDS)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale_train")
    stats = generate_dataset(str(root / "train_text"), 40_000, seed=31, spec=SPEC)
    test_stats = generate_dataset(str(root / "test_text"), 8_000, seed=32, spec=SPEC)
    generate_dataset(str(root / "unlabeled_text"), 3_000, seed=33, spec=SPEC, with_labels=False)
    for name in ("train", "test", "unlabeled"):
        prepare(str(root / f"{name}_text"), str(root / f"{name}_shards"), SPEC, splits={"data": 1.0},
                lines_per_shard=10_000, progress=False)
    return {"root": root, "train_stats": stats, "test_stats": test_stats}


def config(*overrides):
    return load_config(default_config_path("deepfm"), [*SMALL, *overrides])


def test_training_on_shards_learns_and_shard_evaluation_equals_text_evaluation(data, tmp_path):
    root = data["root"]
    common = [f"runner.model_save_path={tmp_path / 'ckpt'}", f"runner.infer_load_path={tmp_path / 'ckpt'}"]
    summary = train(config(f"runner.train_data_dir={root / 'train_shards' / 'data'}", *common))
    assert summary["samples"] == 40_000
    results = {}
    for kind, path in (("shards", root / "test_shards" / "data"), ("text", root / "test_text")):
        [results[kind]] = evaluate(config(f"runner.test_data_dir={path}", f"runner.infer_output={tmp_path / kind}",
                                          *common))
    assert results["shards"]["samples"] == results["text"]["samples"] == 8_000
    assert results["shards"]["auc"] == results["text"]["auc"] >= 0.85 * data["test_stats"]["bayes_auc"]  # it learned
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "shards"), np.loadtxt(tmp_path / "text"))


def test_unlabeled_shards_are_scored_but_not_trained_on(data, tmp_path):
    root = data["root"]
    unlabeled = root / "unlabeled_shards" / "data"
    with pytest.raises(ConfigError, match="no click labels"):
        train(config(f"runner.train_data_dir={unlabeled}", f"runner.model_save_path={tmp_path / 'a'}"))
    train(config(f"runner.train_data_dir={root / 'test_shards' / 'data'}", f"runner.model_save_path={tmp_path / 'b'}"))
    [result] = evaluate(config(f"runner.test_data_dir={unlabeled}", f"runner.infer_load_path={tmp_path / 'b'}",
                               f"runner.infer_output={tmp_path / 'p.txt'}"))
    assert result["auc"] is None and result["samples"] == 3_000 == len(np.loadtxt(tmp_path / "p.txt"))


def test_shards_made_for_another_id_space_are_refused(data, tmp_path):
    with pytest.raises(ConfigError, match="sparse_feature_number: shards 100001"):
        train(config(f"runner.train_data_dir={data['root'] / 'train_shards' / 'data'}",
                     "hyper_parameters.sparse_feature_number=5000", f"runner.model_save_path={tmp_path}"))


def test_unique_id_lookups_give_sorted_unique_gradient_rows_and_the_same_training(data):
    table = paddle.nn.Embedding(50, 3, sparse=True, padding_idx=0)
    hooks = UniqueIdLookups(table)
    ids = paddle.to_tensor(np.array([[5, 3, 5], [0, 3, 7]]))
    out = table(ids)
    np.testing.assert_array_equal(out.numpy(), F.embedding(ids, table.weight, padding_idx=0).numpy())
    out.sum().backward()
    assert table.weight.grad.rows() == [0, 3, 5, 7]  # Adam's duplicate-row merge is skipped for these
    hooks.remove()

    batches = [tuple(paddle.to_tensor(a) for a in b) for b in _batches(data["root"] / "train_text", 3)]
    final = []
    for unique in (False, True):
        paddle.seed(7)
        model = build_model("deepfm", config().hyper_parameters)
        optimizer = build_optimizer(model, config().hyper_parameters["optimizer"])
        lookups = UniqueIdLookups(model) if unique else None
        for dense, sparse, label in batches:
            F.binary_cross_entropy(model(dense, sparse), label).backward()
            optimizer.step()
            optimizer.clear_grad(set_to_zero=False)
        if lookups:
            lookups.remove()
        final.append({k: v.numpy() for k, v in model.state_dict().items()})
    for name in final[0]:
        np.testing.assert_allclose(final[1][name], final[0][name], rtol=0, atol=1e-7, err_msg=name)


def _batches(path, count):
    from ctrkit.data import iter_batches
    out = []
    for batch in iter_batches(str(path), SPEC, 1024):
        out.append(batch)
        if len(out) == count:
            return out
    return out


def test_cpu_threads_is_validated():
    with pytest.raises(ConfigError, match="cpu_threads must be >= 0"):
        config("runner.cpu_threads=-1")
