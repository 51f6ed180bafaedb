"""The model registry lives in the library (ctrkit.zoo) and never imports the zoo: `models` registers itself into
it, and packages of one's own models are found through CTRKIT_MODEL_PACKAGES."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import REPO_ROOT

MY_MODEL = '''
import paddle
from ctrkit.zoo import CTRModel, register
from models.layers import LinearTerm


@register("my_lr")
class MyLR(CTRModel):
    def __init__(self, hyper_parameters, schema=None):
        super().__init__(hyper_parameters, schema)
        self.linear = LinearTerm(self.hp["sparse_feature_number"], self.schema)

    def forward(self, dense_input, sparse_inputs):
        return paddle.nn.functional.sigmoid(self.linear(dense_input, sparse_inputs))
'''


def run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**os.environ, **(env or {})}, timeout=300)


def test_ctrkit_never_imports_the_zoo():
    done = run("""
        import sys
        import ctrkit.zoo, ctrkit.export, ctrkit.config, ctrkit.training, ctrkit.inference
        assert not any(m == "models" or m.startswith("models.") for m in sys.modules), sorted(
            m for m in sys.modules if m.startswith("models"))
        try:
            ctrkit.zoo.get_model_class("deepfm")
        except KeyError as exc:
            assert "import models" in str(exc), exc
        else:
            raise AssertionError("deepfm found without importing the zoo")
        import models
        assert ctrkit.zoo.get_model_class("deepfm").model_name == "deepfm"
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_a_package_of_ones_own_models_is_found(tmp_path):
    package = tmp_path / "my_models" / "my_lr"
    package.mkdir(parents=True)
    (tmp_path / "my_models" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from my_models.my_lr.model import MyLR\n")
    (package / "model.py").write_text(MY_MODEL)
    done = run("""
        import models
        from ctrkit.zoo import available_models, build_model
        assert "my_lr" in available_models() and "deepfm" in available_models()
        model = build_model("my_lr", {"sparse_feature_number": 100})
        print(model.model_name, model.input_specs()[1].shape)
    """, env={"CTRKIT_MODEL_PACKAGES": "my_models", "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO_ROOT}"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "my_lr (-1, 26)"
