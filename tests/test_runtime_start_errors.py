"""Every entry point on the runtime refuses a model directory none of whose versions loads with one line that
names each version's reason (ctrkit.runtime.ModelLoadError), exit status 2, and no traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from rpc_helpers import publish_version

COMMANDS = {
    "serving.rpc": ["-m", "serving.rpc", "--port", "0", "--http_port", "0", "--model"],
    "serving.upload": ["-m", "serving.upload", "--port", "0", "--model"],
    "serving.oip": ["-m", "serving.oip", "--http_port", "0", "--grpc_port", "0", "--model"],
    "paddle_infer.py": [os.path.join("tools", "paddle_infer.py"), "--data_dir", "{data}", "--model_dir"],
}


@pytest.fixture(scope="module")
def broken_root(exported_deepfm, tmp_path_factory):
    root = tmp_path_factory.mktemp("broken") / "models"
    root.mkdir()
    publish_version(exported_deepfm, str(root), 1, break_golden=True)
    return str(root)


@pytest.mark.parametrize("entry", sorted(COMMANDS))
def test_no_loadable_version_is_one_line(entry, broken_root, slot_sample):
    command = [arg.format(data=slot_sample) for arg in COMMANDS[entry]]
    model = os.path.join(broken_root, "1") if entry == "paddle_infer.py" else broken_root  # it takes one export
    proc = subprocess.run([sys.executable, *command, model], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if "could be loaded" in line]
    assert len(lines) == 1 and ": GoldenMismatchError" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
