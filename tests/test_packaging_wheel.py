"""`pip install .`: the wheel declares its dependencies and console scripts, ships no generic top-level package
(`models`, `serving`, `tools`), and works from a fresh virtual environment outside the repository: every module
imports, the model zoo registers, every console script answers --help, and ctrkit.api predicts.

Offline and quick: the wheel is built without build isolation (setuptools and wheel are pinned in
requirements-dev.txt) from a copy of the checkout's files, and installed with --no-deps into a venv that sees this
venv's packages through a .pth file (not the repository: the test checks that `models` cannot be imported)."""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALLED_TOPS = {"ctrkit", "ctrkit_models", "ctrkit_serving", "ctrkit_tools"}
GENERIC = {"models", "serving", "tools"}
IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "build", "dist", "*.egg-info", "output",
                                "data", "runs", ".pytest_cache", "third_party", "uploads")


def copy_checkout(dest: str) -> None:
    """The checkout's files as a fresh clone would have them (tracked + new, not ignored ones)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                                capture_output=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dest, ignore=IGNORE)
        return
    for rel in filter(None, listed):
        src = os.path.join(REPO, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def load_setup_module():
    spec = importlib.util.spec_from_file_location("ctrkit_setup", os.path.join(REPO, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself only runs as __main__
    return module


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("wheel")
    src, dist = root / "src", root / "dist"
    copy_checkout(str(src))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--disable-pip-version-check", "-q", "-w", str(dist), str(src)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = dist.glob("ctrkit-*.whl")
    return str(path)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> str:
    """A fresh venv with the wheel installed (--no-deps); dependencies come from this venv via a .pth file."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    purelib = subprocess.run([str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "_ctrkit_test_deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install",
                             "--no-deps", "--no-index", "--disable-pip-version-check", "-q", wheel],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return str(root)


def run_in(venv: str, args: list[str], cwd: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_rename_imports_rewrites_imports_and_module_strings():
    rename = load_setup_module().rename_imports
    source = ("import os\nimport models  # zoo\nfrom models.layers import MLP\nfrom serving.rpc import protocol as P\n"
              "import serving.rpc.server as server\nif True:\n    from tools import x\n"
              "cmd = [sys.executable, '-m', 'serving.rpc']\nname = f\"models.rank.{n}\"\n"
              "path = 'docs/models.md'; other = 'models'\nfrom ctrkit.models import y\nimport modelsx\n")
    out = rename(source)
    assert out == ("import os\nimport ctrkit_models as models  # zoo\nfrom ctrkit_models.layers import MLP\n"
                   "from ctrkit_serving.rpc import protocol as P\nimport ctrkit_serving.rpc.server as server\n"
                   "if True:\n    from ctrkit_tools import x\n"
                   "cmd = [sys.executable, '-m', 'ctrkit_serving.rpc']\nname = f\"ctrkit_models.rank.{n}\"\n"
                   "path = 'docs/models.md'; other = 'models'\nfrom ctrkit.models import y\nimport modelsx\n")
    assert rename(out) == out  # idempotent
    with pytest.raises(ValueError, match="without `as`"):
        rename("import models.layers\n")


def test_wheel_contents_metadata_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        tops = {n.split("/")[0] for n in names} - {dist_info}
        assert tops == INSTALLED_TOPS, f"top-level names in the wheel: {sorted(tops)}"
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        sources = {n: zf.read(n).decode() for n in names if n.endswith(".py")}
    assert "ctrkit_models/rank/deepfm/config.yaml" in names
    # every data file of the shipped folders ships (configs, the upload page, ...)
    renames = {"ctrkit": "ctrkit", "models": "ctrkit_models", "serving": "ctrkit_serving", "tools": "ctrkit_tools"}
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, timeout=60).stdout.splitlines()
    data_files = [p for p in listed if p.split("/")[0] in renames and not p.endswith((".py", ".pyc"))
                  and "__pycache__" not in p and os.path.isfile(os.path.join(REPO, p))]
    missing = [p for p in data_files if renames[p.split("/")[0]] + p[len(p.split("/")[0]):] not in names]
    assert not missing, f"not in the wheel: {missing}"
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    scripts = project["scripts"]
    for script, target in scripts.items():
        assert f"{script} = {target}" in entry_points
    import ctrkit.console
    for target in scripts.values():
        module, func = target.split(":")
        assert module == "ctrkit.console" and callable(getattr(ctrkit.console, func)), target
    for requirement in project["dependencies"]:
        assert f"Requires-Dist: {requirement.split('>')[0].split('=')[0].split('<')[0]}" in metadata
    for extra in project["optional-dependencies"]:
        assert f"Provides-Extra: {extra}" in metadata
    # no import of the repository's names survived the build
    leftovers = []
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source, name)):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            leftovers += [f"{name}: {m}" for m in modules if m.split(".")[0] in GENERIC]
    assert not leftovers


def test_installed_package_works_outside_the_repository(venv, tmp_path):
    code = r"""
import importlib, importlib.util, json, pkgutil, sys
bad = []
for top in ("ctrkit", "ctrkit_models", "ctrkit_serving", "ctrkit_tools"):
    package = importlib.import_module(top)
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            bad.append(f"{info.name}: {type(exc).__name__}: {exc}")
import ctrkit.zoo
print(json.dumps({
    "bad": bad,
    "generic": {n: importlib.util.find_spec(n) is not None for n in ("models", "serving", "tools")},
    "repo_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("models", "serving", "tools")),
    "ctrkit": importlib.import_module("ctrkit").__file__,
    "deepfm": ctrkit.zoo.get_model_class("deepfm").__module__,
    "models": len(ctrkit.zoo.available_models()),
}))
"""
    result = run_in(venv, [os.path.join(venv, "bin", "python"), "-c", code], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bad"] == []
    assert report["generic"] == {"models": False, "serving": False, "tools": False}
    assert report["repo_modules"] == []
    assert report["ctrkit"].startswith(venv)
    assert report["deepfm"] == "ctrkit_models.rank.deepfm.model" and report["models"] >= 12


def test_every_console_script_answers_help(venv, tmp_path):
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    for script in scripts:
        result = run_in(venv, [os.path.join(venv, "bin", script), "--help"], cwd=str(tmp_path))
        assert result.returncode == 0 and "usage:" in result.stdout, f"{script}:\n{result.stdout}{result.stderr}"
    train = run_in(venv, [os.path.join(venv, "bin", "ctr-train"), "--help"], cwd=str(tmp_path))
    assert train.stdout.startswith("usage: ctr-train")
    rpc = run_in(venv, [os.path.join(venv, "bin", "python"), "-m", "ctrkit_serving.rpc", "--help"], cwd=str(tmp_path))
    assert rpc.returncode == 0 and "--model" in rpc.stdout


def test_installed_api_predicts(venv, exported_deepfm, slot_sample, tmp_path):
    code = ("import sys, json; from ctrkit import api; "
            "p = api.predict(sys.argv[1], sys.argv[2]); print(json.dumps([len(p), float(p.mean())]))")
    result = run_in(venv, [os.path.join(venv, "bin", "python"), "-c", code, exported_deepfm, slot_sample],
                    cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    rows, mean = json.loads(result.stdout.strip().splitlines()[-1])
    from ctrkit import api
    assert rows == 80 and abs(mean - float(api.predict(exported_deepfm, slot_sample).mean())) < 1e-6


def test_start_sh_serves_from_the_installed_wheel(venv, exported_deepfm, tmp_path):
    """The Docker image's runtime path without Docker: start.sh outside a checkout (as /app/Docker/start.sh in the
    image) runs ctrkit_serving.rpc and ctrkit_serving.upload from the installed wheel."""
    import signal
    import socket
    import time
    import urllib.request

    app = tmp_path / "app"
    (app / "Docker").mkdir(parents=True)
    shutil.copy2(os.path.join(REPO, "Docker", "start.sh"), app / "Docker" / "start.sh")
    ports = {}
    for name in ("RPC_PORT", "RPC_HTTP_PORT", "UPLOAD_PORT"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports[name] = str(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(ports, PYTHON=os.path.join(venv, "bin", "python"), CTR_UPLOAD_UPLOAD_DIR=str(tmp_path / "uploads"))
    log_path = tmp_path / "start.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", str(app / "Docker" / "start.sh"), exported_deepfm], cwd=str(tmp_path),
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "start.sh: ready" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        for port in (ports["RPC_HTTP_PORT"], ports["UPLOAD_PORT"]):
            assert urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10).status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(90)
    text = log_path.read_text()
    assert "ctrkit_serving" in text  # the servers' log lines name the installed packages
    assert status == 0, text[-3000:]
