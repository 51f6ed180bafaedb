"""Shared fixtures. Real data comes from ../shared/data/criteo (never copied into the repo)."""
from __future__ import annotations

import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CRITEO = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "criteo"))


def _criteo_file(name: str) -> str:
    path = os.path.join(SHARED_CRITEO, name)
    if not os.path.isfile(path):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing; CI must have ../shared/data/criteo beside the checkout")
        pytest.skip(f"{path} not found (the shared Criteo samples sit beside the checkout)")
    return path


@pytest.fixture(scope="session")
def slot_sample() -> str:
    """80 real Criteo rows in PaddleRec slot format (with click labels)."""
    return _criteo_file("slot_sample.txt")


@pytest.fixture(scope="session")
def raw_sample() -> str:
    """100 real Criteo rows in the raw tab-separated format (with labels)."""
    return _criteo_file("raw_sample.txt")


def _export_for_tests(model_name: str, overrides: dict, output_dir: str, golden_file: str) -> str:
    """A seeded random-init zoo model exported with the Paddle Serving layout and ONNX; golden rows = the first
    rows of `golden_file` (real Criteo rows)."""
    import paddle

    from ctrkit.data.spec import FeatureSpec
    from ctrkit.export import export_model, read_golden_rows
    from models.registry import build_model, get_model_class

    hyper_parameters = {**get_model_class(model_name).default_hyper_parameters(), **overrides}
    paddle.seed(2024)
    model = build_model(model_name, hyper_parameters)
    spec = FeatureSpec(sparse_feature_number=hyper_parameters["sparse_feature_number"])
    dense, sparse = read_golden_rows(golden_file, spec)
    return export_model(model, output_dir, feature_spec=spec, golden_dense=dense, golden_sparse=sparse,
                        golden_source=golden_file, serving=True, onnx=True)


@pytest.fixture(scope="session")
def export_model_dir(tmp_path_factory, slot_sample):
    """Factory `export_model_dir(model_name, **hyper_parameter_overrides) -> path` of an export directory
    (tools/to_static.py layout with serving_server/, serving_client/ and model.onnx; random init, seeded;
    golden batch from the real slot sample). Cached per arguments for the whole session."""
    cache: dict[tuple, str] = {}

    def make(model_name: str, **overrides) -> str:
        key = (model_name, repr(sorted(overrides.items())))
        if key not in cache:
            output_dir = tmp_path_factory.mktemp(f"export-{model_name}") / "model"
            cache[key] = _export_for_tests(model_name, overrides, str(output_dir), slot_sample)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def exported_deepfm(export_model_dir) -> str:
    """A small DeepFM (ids up to 1,000,000 like the real samples; MLP 64-32) exported with --serving and --onnx."""
    return export_model_dir("deepfm", fc_sizes=[64, 32])
