"""The dependency lists stay in step: requirements/*.txt (exact pins, one file per use) and pyproject.toml's
dependencies and extras (ranges) name the same packages, every pin satisfies its range, every third-party import
in the project is declared in the file of the part that imports it, and the serving stack imports no training or
benchmark package (so the serving image, which installs requirements/serving.txt only, can run it)."""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("core", "serving", "train", "bench")
LOCAL = {"ctrkit", "ctrkit_models", "ctrkit_serving", "ctrkit_tools", "models", "serving", "tools", "benchmarks",
         "tests", "conftest"}


def read_requirements(path: str, own_only: bool = False) -> dict[str, str]:
    """{canonical name: pinned version} of a requirements file, following `-r` unless own_only."""
    pins: dict[str, str] = {}
    with open(path) as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("-r"):
                if not own_only:
                    pins.update(read_requirements(os.path.join(os.path.dirname(path), line[2:].strip())))
                continue
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert match, f"{path}: {raw.strip()!r} is not an exact pin (name==version)"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def extra_requirements(name: str) -> dict[str, Requirement]:
    """The requirements of one extra (core for "core"), with ctrkit[...] self-references expanded."""
    project = pyproject()
    lines = project["dependencies"] if name == "core" else project["optional-dependencies"][name]
    out: dict[str, Requirement] = {}
    for line in lines:
        req = Requirement(line)
        if canonicalize_name(req.name) == "ctrkit":
            for extra in req.extras:
                out.update(extra_requirements(extra))
        else:
            out[canonicalize_name(req.name)] = req
    return out


def part_file(part: str) -> str:
    return os.path.join(REPO, "requirements", f"{part}.txt")


@pytest.mark.parametrize("part", PARTS)
def test_each_requirements_file_matches_its_extra(part):
    pins = read_requirements(part_file(part))
    declared = extra_requirements(part)
    if part != "core":
        declared.update(extra_requirements("core"))
    assert set(pins) == set(declared), (
        f"requirements/{part}.txt and pyproject.toml's {'dependencies' if part == 'core' else 'extra ' + part!r} "
        f"differ: only in the file {sorted(set(pins) - set(declared))}, "
        f"only in pyproject {sorted(set(declared) - set(pins))}")
    for name, version in pins.items():
        assert declared[name].specifier.contains(version, prereleases=True), (
            f"{name}=={version} (requirements/{part}.txt) is outside pyproject's range {declared[name].specifier}")


def test_full_install_is_every_part_and_dev_adds_to_it():
    full = read_requirements(os.path.join(REPO, "requirements.txt"))
    union: dict[str, str] = {}
    for part in PARTS:
        union.update(read_requirements(part_file(part)))
    assert full == union
    assert set(extra_requirements("all")) | set(extra_requirements("core")) == set(full)
    dev = read_requirements(os.path.join(REPO, "requirements-dev.txt"))
    assert full.items() <= dev.items()
    # one version per package across all files
    seen: dict[str, str] = {}
    for path in [os.path.join(REPO, "requirements-dev.txt")] + [part_file(p) for p in PARTS]:
        for name, version in read_requirements(path, own_only=True).items():
            assert seen.setdefault(name, version) == version, f"{name} pinned to {seen[name]} and {version}"


def third_party_imports(folder: str) -> dict[str, set[str]]:
    """{top-level module: {files}} for every absolute import of a non-stdlib, non-project module."""
    found: dict[str, set[str]] = {}
    for root, dirs, files in os.walk(os.path.join(REPO, folder)):
        dirs[:] = [d for d in dirs if d not in ("__pycache__",) and not d.startswith(".")]
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in LOCAL or top.startswith("_"):
                        continue
                    if any(os.path.exists(os.path.join(where, top + ".py")) or os.path.isdir(os.path.join(where, top))
                           for where in (root, os.path.join(REPO, "benchmarks"), os.path.join(REPO, "tools"))):
                        continue  # a sibling script's module (benchmarks/, tests/ run as scripts)
                    found.setdefault(module if top == "google" else top, set()).add(os.path.relpath(path, REPO))
    return found


def distribution_of(module: str) -> str | None:
    mapping = importlib.metadata.packages_distributions()
    top = module.split(".")[0]
    if top == "google":  # a namespace shared by several distributions
        return "protobuf" if module.startswith("google.protobuf") else None
    names = mapping.get(top)
    return canonicalize_name(names[0]) if names else None


# which requirements a folder's imports must be declared in
FOLDER_PARTS = {
    "serving": ("core", "serving"),
    "ctrkit": PARTS,
    "models": ("core", "train"),
    "tools": PARTS,
    "benchmarks": PARTS,
}


@pytest.mark.parametrize("folder", sorted(FOLDER_PARTS))
def test_every_third_party_import_is_declared(folder):
    allowed: dict[str, str] = {}
    for part in FOLDER_PARTS[folder]:
        allowed.update(read_requirements(part_file(part)))
    missing = []
    for module, files in sorted(third_party_imports(folder).items()):
        dist = distribution_of(module)
        if dist is None or dist not in allowed:
            missing.append(f"{module} ({dist or 'not installed'}) in {', '.join(sorted(files)[:3])}")
    assert not missing, (f"imports in {folder}/ not declared in requirements/{{{','.join(FOLDER_PARTS[folder])}}}.txt "
                         f"(pin them there and add them to pyproject.toml): {missing}")


def test_test_imports_are_declared_in_dev_requirements():
    allowed = read_requirements(os.path.join(REPO, "requirements-dev.txt"))
    missing = [f"{m} in {sorted(files)[0]}" for m, files in sorted(third_party_imports("tests").items())
               if (distribution_of(m) or m) not in allowed]
    assert not missing, f"test imports missing from requirements-dev.txt: {missing}"


TRAINING_ONLY = ("tqdm", "visualdl", "paddle2onnx", "onnx", "matplotlib", "pynvml", "psutil")
SERVING_MODULES = [m for m in ("serving.rpc.server", "serving.upload.app",
                               "serving.upload.server", "ctrkit.inference",
                               "ctrkit.runtime", "ctrkit.api")
                   if os.path.exists(os.path.join(REPO, *m.split(".")) + ".py")
                   or os.path.isdir(os.path.join(REPO, *m.split(".")))]


def test_serving_stack_imports_no_training_or_benchmark_package():
    """Run the imports with the training/benchmark packages made unimportable, as in the serving image."""
    code = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAINING_ONLY!r}:
            raise ImportError(f"{{name}} is not in the serving image (requirements/serving.txt)")
sys.meta_path.insert(0, Block())
for module in {SERVING_MODULES!r}:
    importlib.import_module(module)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
