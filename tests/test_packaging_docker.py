"""Docker/ checked without a Docker engine (there is none where this project is tested): the build context that
Docker/Dockerfile.dockerignore lets through holds every COPY source and nothing bulky or private; the serving image
installs the serving requirements only; the image runs as a non-root user with a health check; the shell scripts
parse (and pass shellcheck when it is installed). The image's runtime path -- start.sh serving from the installed
wheel -- is exercised in tests/test_packaging_wheel.py."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(REPO, "Docker")
DOCKERFILE = os.path.join(DOCKER, "Dockerfile")
TRAINING_ONLY = {"visualdl", "matplotlib", "paddle2onnx", "onnx", "tqdm", "nvidia-ml-py", "psutil", "pytest"}


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(exclude?, regex) per line of Docker/Dockerfile.dockerignore, in order (the last match wins)."""
    patterns = []
    with open(os.path.join(DOCKER, "Dockerfile.dockerignore")) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            pattern = line.lstrip("!").strip("/")
            regex = ""
            i = 0
            while i < len(pattern):
                if pattern.startswith("**/", i):
                    regex, i = regex + "(?:.*/)?", i + 3
                elif pattern.startswith("**", i):
                    regex, i = regex + ".*", i + 2
                elif pattern[i] == "*":
                    regex, i = regex + "[^/]*", i + 1
                elif pattern[i] == "?":
                    regex, i = regex + "[^/]", i + 1
                else:
                    regex, i = regex + re.escape(pattern[i]), i + 1
            patterns.append((exclude, re.compile(f"^{regex}(?:/.*)?$")))
    return patterns


def in_context(path: str, patterns) -> bool:
    included = True
    for exclude, regex in patterns:
        if regex.match(path):
            included = not exclude
    return included


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.splitlines() if os.path.isfile(os.path.join(REPO, p))]


def dockerfile_instructions() -> list[tuple[str, str]]:
    with open(DOCKERFILE) as f:
        text = re.sub(r"\\\n", " ", f.read())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_build_context_has_every_copy_source_and_nothing_else():
    patterns = dockerignore_patterns()
    files = repo_files()
    sent = [p for p in files if in_context(p, patterns)]
    for instruction, args in dockerfile_instructions():
        if instruction != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert any(p == source or p.startswith(source.rstrip("/") + "/") for p in sent), \
                f"COPY {source}: not in the build context Docker/Dockerfile.dockerignore lets through"
    assert any(p.startswith("ctrkit/") for p in sent) and "Docker/start.sh" in sent
    for path in sent:
        top = path.split("/")[0]
        assert top in {"pyproject.toml", "setup.py", "README.md", "requirements", "ctrkit", "models", "serving",
                       "tools", "Docker"}, f"{path} would be sent to the Docker build"
        assert "__pycache__" not in path and not path.endswith(".pyc")
    for private in (".venv/bin/python", "output/x", "data/synthetic/train/part-0.txt", "uploads/x", ".git/HEAD",
                    "benchmarks/run.py", "tests/conftest.py"):
        assert not in_context(private, patterns), private


def test_image_installs_the_serving_requirements_only():
    runs = [args for instruction, args in dockerfile_instructions() if instruction == "RUN"]
    installs = " ".join(r for r in runs if "pip install" in r)
    assert "requirements/serving.txt" in installs
    assert "requirements.txt " not in installs and "requirements/train.txt" not in installs
    from test_packaging_requirements import read_requirements
    serving = read_requirements(os.path.join(REPO, "requirements", "serving.txt"))
    assert not TRAINING_ONLY & set(serving), TRAINING_ONLY & set(serving)
    assert "paddlepaddle" in serving and "grpcio" in serving


def test_image_conventions():
    instructions = dockerfile_instructions()
    names = [i for i, _ in instructions]
    assert names.count("FROM") == 2  # wheel build stage + slim runtime stage
    assert any(i == "USER" and a.strip() not in ("root", "0") for i, a in instructions)
    assert "HEALTHCHECK" in names
    for instruction, args in instructions:
        if instruction == "RUN" and "apt-get install" in args:
            assert "--no-install-recommends" in args and "rm -rf /var/lib/apt/lists" in args
    entrypoint = next(a for i, a in instructions if i == "ENTRYPOINT")
    assert "/app/Docker/start.sh" in entrypoint


@pytest.mark.parametrize("script", ["Docker/start.sh", "scripts/setup.sh", "scripts/ensure_system_packages.sh",
                                    "scripts/ensure_redis.sh", "scripts/fetch_serving_client.sh", "run_tests.sh",
                                    "quickstart.sh", ".ci/run"])
def test_shell_scripts_parse_and_pass_shellcheck(script):
    path = os.path.join(REPO, script)
    assert os.access(path, os.X_OK), f"{script} is not executable"
    result = subprocess.run(["bash", "-n", path], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        result = subprocess.run([shellcheck, "-S", "warning", "-x", path], cwd=REPO, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stdout
