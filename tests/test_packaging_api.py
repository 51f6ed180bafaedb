"""ctrkit.api: prediction from an exported model in one call, from lines, files and arrays."""
from __future__ import annotations

import numpy as np
import pytest

from ctrkit import api
from ctrkit.data import DataFormatError, FeatureSpec, parse_lines
from ctrkit.inference import create_predictor


@pytest.fixture(scope="module")
def expected(exported_deepfm, slot_sample):
    """Predictions of the slot sample straight from the predictor factory (what api must reproduce)."""
    with open(slot_sample) as f:
        lines = f.read().splitlines()
    predictor = create_predictor(exported_deepfm)
    batch = parse_lines(lines, FeatureSpec(sparse_feature_number=1000001), source="sample").batch
    return lines, batch, predictor.predict(batch.dense, batch.sparse)


def test_predict_lines_files_and_arrays_agree(exported_deepfm, slot_sample, expected, tmp_path):
    lines, batch, want = expected
    got = api.predict(exported_deepfm, lines)
    assert got.dtype == np.float32 and got.shape == (len(lines),)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

    np.testing.assert_allclose(api.predict(exported_deepfm, slot_sample), want, atol=1e-6)        # a file
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("\n".join(lines[:30]) + "\n")
    (folder / "b.txt").write_text("\n".join(lines[30:]))                                           # no final newline
    np.testing.assert_allclose(api.predict(exported_deepfm, folder), want, atol=1e-6)              # a directory

    with api.load(exported_deepfm, batch_size=7) as model:  # several model calls, same answers, input order
        assert model.version == 0
        np.testing.assert_allclose(model.predict([s.encode() for s in lines]), want, atol=1e-6)
        np.testing.assert_allclose(model.predict({"dense_input": batch.dense, "sparse_inputs": batch.sparse}),
                                   want, atol=1e-6)
        np.testing.assert_allclose(model.predict((batch.dense, batch.sparse)), want, atol=1e-6)
        assert model.predict([]).shape == (0,)


def test_raw_criteo_lines(exported_deepfm, raw_sample):
    with open(raw_sample) as f:
        lines = f.read().splitlines()
    spec = FeatureSpec(sparse_feature_number=1000001)
    batch = parse_lines(lines, spec, source="raw").batch
    want = create_predictor(exported_deepfm).predict(batch.dense, batch.sparse)
    np.testing.assert_allclose(api.predict(exported_deepfm, lines), want, atol=1e-6)


def test_onnxruntime_backend_matches_paddle(exported_deepfm, expected):
    lines, _, want = expected
    np.testing.assert_allclose(api.predict(exported_deepfm, lines, backend="onnxruntime"), want, atol=1e-5)


def test_bad_input_is_a_clear_error(exported_deepfm, expected, tmp_path):
    lines, batch, _ = expected
    with api.load(exported_deepfm) as model:
        with pytest.raises(DataFormatError) as err:
            model.predict(lines[:4] + ["1 oops"] + lines[4:])
        assert err.value.line_number == 5
        with pytest.raises(Exception, match="sparse_inputs"):
            model.predict({"dense_input": batch.dense, "sparse_inputs": batch.sparse[:, :3]})
        with pytest.raises(TypeError):
            model.predict(b"1 2 3")
    with pytest.raises(FileNotFoundError):
        api.predict(tmp_path / "missing", lines)
    with pytest.raises(ValueError, match="batch_size"):
        api.load(exported_deepfm, batch_size=0)


def test_api_needs_only_the_core_requirements(exported_deepfm, slot_sample):
    """`pip install ctrkit` without extras (requirements/core.txt) is enough for ctrkit.api and ctr-predict: run
    them with every package outside core made unimportable."""
    import json
    import os
    import subprocess
    import sys

    from test_packaging_requirements import REPO, part_file, read_requirements

    core = set(read_requirements(part_file("core")))
    code = f"""
import importlib, importlib.metadata, json, sys
from packaging.utils import canonicalize_name
core = {sorted(core)!r}
mine = {{"ctrkit", "models", "serving", "tools"}}
blocked = {{top for top, dists in importlib.metadata.packages_distributions().items()
           if top not in mine and not any(canonicalize_name(d) in core for d in dists)}}
blocked -= {{"packaging", "setuptools", "_distutils_hack", "pkg_resources"}}
# what the core packages need themselves (their own requirements, transitively) stays importable
def closure(names):
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for r in reqs:
            if "extra ==" in r:
                continue
            todo.append(canonicalize_name(r.split(";")[0].split("[")[0].split(" ")[0].split(">")[0]
                                          .split("=")[0].split("<")[0].split("!")[0].split("~")[0]))
    return seen
needed = closure(core)
for top, dists in importlib.metadata.packages_distributions().items():
    if any(canonicalize_name(d) in needed for d in dists):
        blocked.discard(top)
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{{name}} is not in requirements/core.txt")
sys.meta_path.insert(0, Block())
from ctrkit import api
probs = api.predict(sys.argv[1], sys.argv[2])
sys.path.insert(0, "tools")
importlib.import_module("paddle_infer")
print(json.dumps([len(probs), sorted(b for b in blocked if b in ("grpc", "flask", "visualdl", "onnx"))]))
"""
    result = subprocess.run([sys.executable, "-c", code, exported_deepfm, slot_sample], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows, blocked = json.loads(result.stdout.strip().splitlines()[-1])
    assert rows == 80 and blocked == ["flask", "grpc", "onnx", "visualdl"]


def test_importing_ctrkit_changes_no_environment():
    """The CPU settings are the entry points' job (ctrkit.cpu_env), not an import side effect."""
    import os
    import subprocess
    import sys

    from test_packaging_requirements import REPO

    code = ("import os, json; before = dict(os.environ)\n"
            "import ctrkit, ctrkit.api, ctrkit.inference, ctrkit.data, ctrkit.runtime\n"
            "print(json.dumps(sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))))")
    env = {k: v for k, v in os.environ.items() if k != "MKL_DEBUG_CPU_TYPE"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
