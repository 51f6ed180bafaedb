"""The feature schema (ctrkit/schema.py): Criteo default, round trip, packing layout, validation messages."""
import json

import pytest

import models  # noqa: F401  (registers the zoo)

from ctrkit.config import ConfigError, load_config
from ctrkit.data.spec import FeatureSpec
from ctrkit.schema import (CategoricalField, FeatureSchema, LabelSpec, MultiValuedField, NumericField, SchemaError,
                           criteo_schema, schema_from_feature_spec)

MOVIELENS = {
    "name": "movielens", "format": "csv", "header": True,
    "label": {"name": "rating", "threshold": 4},
    "numeric": [{"name": "age", "preprocess": "log", "fill": 0}],
    "categorical": ["user_id", "movie_id", "gender"],
    "multi_valued": [{"name": "genres", "separator": "|", "max_len": 6, "pooling": "mean"}],
}


def test_criteo_default_matches_feature_spec():
    s = criteo_schema()
    assert (s.n_dense, s.n_single, s.n_fields, s.sparse_width) == (13, 26, 26, 26)
    assert s.name == "criteo" and s.is_criteo
    assert s.feature_spec() == FeatureSpec()
    assert [f.slot for f in s.categorical] == [str(k) for k in range(1, 27)]
    assert {f.slot for f in s.numeric} == {"dense_feature"} and s.label.slot == "click"
    spec = FeatureSpec(sparse_feature_number=1000, data_format="raw", dense_min=(1,) * 13, dense_diff=(2,) * 13)
    assert schema_from_feature_spec(spec).feature_spec() == spec


@pytest.mark.parametrize("schema", [criteo_schema(), criteo_schema(77, "slot"),
                                    FeatureSchema.from_dict(MOVIELENS, key="dataset")])
def test_round_trip_is_exact_through_json(schema):
    d = json.loads(json.dumps(schema.to_dict()))
    assert FeatureSchema.from_dict(d) == schema
    assert FeatureSchema.from_dict(d).to_dict() == schema.to_dict()


def test_layout_and_widths():
    s = FeatureSchema.from_dict(MOVIELENS, key="dataset")
    assert (s.n_dense, s.n_single, s.n_fields, s.sparse_width) == (1, 3, 4, 9)
    assert [(f.name, f.kind, f.start, f.width, f.pooling) for f in s.field_layout()] == [
        ("user_id", "single", 0, 1, "sum"), ("movie_id", "single", 1, 1, "sum"), ("gender", "single", 2, 1, "sum"),
        ("genres", "multi", 3, 6, "mean")]
    assert not s.is_criteo and s.feature_spec() is None
    direct = FeatureSchema(numeric=(NumericField("age", preprocess="log"),),
                           categorical=(CategoricalField("user_id"), CategoricalField("movie_id"),
                                        CategoricalField("gender")),
                           multi_valued=(MultiValuedField("genres", max_len=6, pooling="mean"),),
                           label=LabelSpec("rating", 4), format="csv", header=True, name="movielens")
    assert direct == s


@pytest.mark.parametrize("change, message", [
    ({"numeric": [{"name": "x", "preprocess": "zscore"}]}, "dataset.numeric[0].preprocess: must be one of"),
    ({"numeric": [{"name": "x", "preprocess": "minmax"}]}, "dataset.numeric[0].diff: missing"),
    ({"numeric": [{"name": "x", "fill": "a"}]}, "dataset.numeric[0].fill: expected a number"),
    ({"numeric": [{"name": "x", "diff": 0}]}, "dataset.numeric[0].diff: must be non-zero"),
    ({"categorical": ["user_id", "user_id"]}, "dataset.categorical[1].name: 'user_id' is declared twice"),
    ({"multi_valued": [{"name": "genres"}]}, "dataset.multi_valued[0].max_len: missing"),
    ({"multi_valued": [{"name": "genres", "max_len": 0}]}, "dataset.multi_valued[0].max_len: must be a positive"),
    ({"multi_valued": [{"name": "genres", "max_len": 3, "pooling": "max"}]}, "dataset.multi_valued[0].pooling"),
    ({"multi_valued": [{"name": "genres", "max_len": 3, "separator": ","}]}, "is the csv delimiter"),
    ({"format": "parquet"}, "dataset.format: must be one of"),
    ({"format": "raw"}, "dataset.format: 'raw' is Criteo's own"),
    ({"header": False}, "needs header: true"),
    ({"label": {"name": "gender"}}, "dataset.label.name: 'gender' is also a feature"),
    ({"label": {"name": "rating", "threshold": "high"}}, "dataset.label.threshold: expected a number"),
    ({"colour": 1}, "dataset: unknown key(s) colour"),
    ({"categorical": [{"name": "a", "slott": "b"}]}, "dataset.categorical[0]: unknown key(s) slott"),
    ({"categorical": [{"name": "a:b"}]}, "dataset.categorical[0].name"),
    ({"categorical": [], "multi_valued": []}, "at least one categorical"),
    ({"header": False, "columns": ["user_id", "movie_id"]}, "dataset.columns: declared field(s)"),
    ({"categorical": [{"name": "a", "slot": "rating"}]}, "dataset.categorical[0].slot: 'rating' is also the slot"),
])
def test_validation_names_the_key(change, message):
    with pytest.raises(SchemaError) as err:
        FeatureSchema.from_dict(dict(MOVIELENS, **change), key="dataset")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def _write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_config_without_dataset_block_is_criteo(tmp_path):
    config = load_config(_write(tmp_path, "runner:\n  model: deepfm\n  data_format: slot\n"
                                          "hyper_parameters:\n  sparse_feature_number: 5000\n"))
    assert config.schema() == criteo_schema(5000, "slot")
    assert "dataset" not in config.to_dict()


def test_config_dataset_block(tmp_path):
    text = "runner:\n  model: deepfm\ndataset:\n" + "\n".join(
        f"  {k}: {json.dumps(v)}" for k, v in MOVIELENS.items()) + "\n"
    path = _write(tmp_path, text)
    schema = load_config(path).schema()
    assert schema == FeatureSchema.from_dict(MOVIELENS, key="dataset")
    assert load_config(path, ["dataset.format=tsv"]).schema().format == "tsv"
    with pytest.raises(ConfigError, match=r"dataset\.multi_valued\[0\]\.pooling"):
        load_config(path, ["dataset.multi_valued=[{name: genres, max_len: 2, pooling: max}]"])
    with pytest.raises(ConfigError, match="dense_input_dim is 5 but the dataset schema 'movielens' has 1"):
        load_config(path, ["hyper_parameters.dense_input_dim=5"])
    with pytest.raises(ConfigError, match="'dataset' must be a mapping"):
        load_config(_write(tmp_path, "runner:\n  model: deepfm\ndataset: [1]\n"))


def test_runner_data_format_and_dataset_format_must_agree(tmp_path):
    text = "runner:\n  model: deepfm\ndataset:\n" + "\n".join(
        f"  {k}: {json.dumps(v)}" for k, v in MOVIELENS.items()) + "\n"
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match="runner.data_format is 'slot' but dataset.format is 'csv'"):
        load_config(path, ["runner.data_format=slot"])
    assert load_config(path, ["runner.data_format=auto"]).schema().format == "csv"
