"""Every command in the fenced bash blocks of README.md, docs/*.md and Docker/README.md works as written from a
fresh clone, run from the repository root after ./quickstart.sh (which the README's first block runs):

- the program exists: `./script.sh` and `Docker/start.sh` are executable files, `.venv/bin/<x>` is the venv's
  interpreter or one of its commands; a bare `python`, `pip`, `pytest`, `visualdl` or `ctr-*` needs the venv
  activated, so it is only accepted after a `source .venv/bin/activate` line in the same file;
- every script (`tools/x.py`, `benchmarks/x.py`, `-m serving.x`, console scripts) answers `--help`, and every
  flag a command passes appears in that help (so a renamed or removed flag fails here);
- `-m <config>` exists and `-o key=value` overrides are accepted by ctrkit's config loader;
- every relative path exists in the checkout, or is produced by ./quickstart.sh (`data/synthetic/`,
  `output/deepfm/`) or by an earlier command in the same file; what a command writes (`--out`, `--output`,
  `--output_dir`, `runner.model_save_path=`, `cp`/`mv` targets, ...) lands in a git-ignored place
  (`output/`, `data/`, ...), never among the tracked files.
Commands are not run (the servers, the benchmark and training take minutes); `--help` is.
"""
from __future__ import annotations

import functools
import glob
import os
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
DOCS = ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))),
        "Docker/README.md"]
# What ./quickstart.sh leaves behind (the README's first command); docs may build on it.
QUICKSTART_OUTPUTS = ("data/synthetic", "output/deepfm")
# Flags whose value is something the command writes.
OUTPUT_FLAGS = {"--out", "--output", "--output_dir", "--save_log_path", "--work_dir", "--upload_dir", "--log_dir",
                "--logdir", "--workdir"}
OUTPUT_KEYS = {"runner.model_save_path", "runner.infer_output", "runner.visual_log_path"}
VENV_COMMANDS = {"python", "python3", "pip", "pytest", "visualdl"}
SYSTEM_COMMANDS = {"curl", "kill", "cp", "mv", "mkdir", "uptime", "docker", "cat", "ls", "head", "tail", "echo",
                   "export", "cd", "apt-get", "redis-server", "redis-cli", "grep", "wget", "tar", "gunzip", "sleep",
                   "wc", "rm", "nvidia-smi", "git", "sudo", "du", "time", "sort", "jq", "diff", "tee", "ps",
                   "trap", "wait", "set", "exit", "true", "false", "read", "printf", "test", "[", "unset"}
LAUNCH_OPTIONS_WITH_VALUES = {"--nproc_per_node", "--ips", "--gpus", "--log_dir", "--master", "--nnodes",
                              "--job_id", "--devices", "--rank"}
PATH_SUFFIXES = (".txt", ".yaml", ".yml", ".json", ".py", ".prototxt", ".sh", ".onnx", ".pdparams", ".md", ".tsv",
                 ".csv", ".jsonl")


# ------------------------------------------------------------------------------------------------ extraction

def bash_blocks(doc: str) -> list[tuple[int, str]]:
    """(first line number, text) of every ```bash / ```sh / ```shell / ```console block."""
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^\s*```(\w*)\s*$", lines[i])
        if m:
            lang, start = m.group(1), i + 1
            j = start
            while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
                j += 1
            if lang in ("bash", "sh", "shell", "console"):
                body = [re.sub(r"^\s*\$ ", "", line) for line in lines[start:j]] if lang == "console" else lines[start:j]
                blocks.append((start + 1, "\n".join(body)))
            i = j + 1
        else:
            i += 1
    return blocks


def _open_parens(text: str) -> int:
    """( minus ) outside quotes: a bash array assignment `A=(...` continues on the next line."""
    depth, quote = 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
    return depth


def logical_commands(block: str) -> list[tuple[int, list[str]]]:
    """(line offset in the block, tokens) per command: continuation lines joined, comments dropped, split at
    ; && || | &."""
    commands: list[tuple[int, list[str]]] = []
    pending, start = "", 0
    for number, line in enumerate(block.split("\n")):
        if not pending:
            start = number
        pending = f"{pending}\n{line}" if pending else line
        if pending.rstrip().endswith("\\"):
            pending = pending.rstrip()[:-1] + " "
            continue
        try:
            lexer = shlex.shlex(pending, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        if _open_parens(pending) > 0:
            continue
        pending = ""
        current: list[str] = []
        for token in tokens:
            if token in (";", "&&", "||", "|", "&"):
                if current:
                    commands.append((start, current))
                current = []
            else:
                current.append(token)
        if current:
            commands.append((start, current))
    return commands


# ------------------------------------------------------------------------------------------------ helpers

@functools.lru_cache(maxsize=None)
def help_text(*invocation: str) -> tuple[int, str]:
    result = subprocess.run([PYTHON, *invocation, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "200"})
    return result.returncode, result.stdout + result.stderr


@functools.lru_cache(maxsize=None)
def console_scripts() -> dict[str, str]:
    """console script -> the module it runs (from pyproject + ctrkit/console.py)."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"].get("scripts", {})
    source = open(os.path.join(REPO, "ctrkit", "console.py"), encoding="utf-8").read()
    out = {}
    for name, target in scripts.items():
        func = target.split(":")[1]
        m = re.search(rf"def {func}\(\)[^:]*:\s*\n\s*_run\(\"([\w.]+)\"\)", source)
        if m:
            out[name] = m.group(1)
    return out


def git_ignored(path: str) -> bool:
    result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO, timeout=30)
    return result.returncode == 0


def looks_like_path(value: str) -> bool:
    if not value or value.startswith(("-", "http://", "https://", "redis://", "$", "{", "[", "@")) or "=" in value:
        return False
    if re.fullmatch(r"[\w.-]+:\d+", value) or re.fullmatch(r"\d+(\.\d+)*", value):  # host:port, numbers
        return False
    return "/" in value or value.endswith(PATH_SUFFIXES)


class DocChecker:
    def __init__(self, doc: str):
        self.doc = doc
        self.problems: list[str] = []
        self.produced: set[str] = set(QUICKSTART_OUTPUTS)
        self.activated = False
        self.environments: set[str] = set()

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.doc}:{where}: {message}")

    # -------------------------------------------------------------------------------------- paths
    def is_produced(self, path: str) -> bool:
        norm = os.path.normpath(path)
        return any(norm == p or norm.startswith(p.rstrip("/") + "/") for p in self.produced)

    def check_input_path(self, where: str, path: str) -> None:
        path = path.replace("$PWD/", "").replace("${PWD}/", "")
        if os.path.isabs(path) or path.startswith("~") or "$" in path or "<" in path:
            return  # the user's own data (/data/criteo/...) or a placeholder
        if "*" in path or "?" in path:
            if glob.glob(os.path.join(REPO, path)):
                return
            return self.problem(where, f"{path!r} matches no file in a fresh clone")
        if os.path.exists(os.path.join(REPO, path)) or self.is_produced(path):
            return
        self.problem(where, f"path {path!r} does not exist in a fresh clone and no earlier command creates it")

    def record_output(self, where: str, path: str) -> None:
        path = path.replace("$PWD/", "").replace("${PWD}/", "")
        if os.path.isabs(path) or "$" in path:
            return
        norm = os.path.normpath(path)
        if not norm.startswith("..") and not git_ignored(norm):
            self.problem(where, f"writes {path!r} into the checkout outside the git-ignored folders "
                                "(use output/... or data/...)")
        self.produced.add(norm)

    # -------------------------------------------------------------------------------------- commands
    def check(self, where: str, tokens: list[str]) -> None:
        if tokens and re.match(r"[A-Za-z_][A-Za-z0-9_]*=\(", tokens[0]):  # NAME=(array ...): its paths only
            for token in [tokens[0].split("(", 1)[1], *tokens[1:]]:
                if looks_like_path(token.rstrip(")")):
                    self.check_input_path(where, token.rstrip(")"))
            return
        while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):  # VAR=value prefixes
            tokens = tokens[1:]
        kept: list[str] = []
        i = 0
        while i < len(tokens):  # redirections: > file, 2> file, >> file, < file, 2>&1
            m = re.fullmatch(r"(\d*)(>>?|<)(&\d+)?(.*)", tokens[i])
            if m and not m.group(3):
                target = m.group(4) or (tokens[i + 1] if i + 1 < len(tokens) else "")
                i += 1 if m.group(4) else 2
                if target and target != "/dev/null":
                    (self.check_input_path if m.group(2) == "<" else self.record_output)(where, target)
                continue
            if not (m and m.group(3)):
                kept.append(tokens[i])
            i += 1
        tokens = kept
        if not tokens:
            return
        program, args = tokens[0], tokens[1:]
        if program in ("source", ".") and args and args[0].endswith("bin/activate"):
            self.activated = True
            return
        base = os.path.basename(program)
        if re.fullmatch(r"python3(\.\d+)?", program) and args[:2] and args[0] == "-m" and args[1] == "venv":
            self.environments.update(a for a in args[2:] if not a.startswith("-"))  # a new environment
            return
        if any(program.startswith(env.rstrip("/") + "/bin/") for env in self.environments):
            return  # a command of an environment made above (e.g. after `pip install .`)
        if program.startswith(".venv/bin/"):
            if base.startswith("python"):
                return self.check_python(where, args)
            if base in console_scripts():
                return self.check_flags(where, ("-m", "ctrkit.console_help", base), args, script=base)
            if base in VENV_COMMANDS:
                return
            return self.problem(where, f"{program}: not a command the venv provides")
        if base in VENV_COMMANDS or base in console_scripts():
            if not self.activated:
                return self.problem(where, f"`{program} ...` needs the virtual environment: write "
                                           f"`.venv/bin/{base} ...` (or activate .venv earlier in this file)")
            if base.startswith("python"):
                return self.check_python(where, args)
            return
        if "/" in program:
            path = os.path.join(REPO, program)
            if not os.path.isfile(path) or not os.access(path, os.X_OK):
                return self.problem(where, f"{program}: no such executable file")
            for arg in args:
                if looks_like_path(arg):
                    self.check_input_path(where, arg)
            return
        if program == "curl":
            for arg in args:
                m = re.search(r"@([^;\s]+)", arg)
                if m and arg.split("=", 1)[0] in ("file",) or arg.startswith("@"):
                    self.check_input_path(where, (m.group(1) if m else arg[1:]))
            return
        if program == "docker":
            for i, arg in enumerate(args):
                if arg == "-f" and i + 1 < len(args):
                    self.check_input_path(where, args[i + 1])
                if arg == "-v" and i + 1 < len(args):
                    self.check_input_path(where, args[i + 1].split(":")[0])
            return
        if program in ("cp", "mv"):
            paths = [a for a in args if not a.startswith("-")]
            for src in paths[:-1]:
                self.check_input_path(where, src)
            if paths:
                self.record_output(where, paths[-1])
            return
        if program == "mkdir":
            for arg in args:
                if not arg.startswith("-"):
                    self.record_output(where, arg)
            return
        if program in SYSTEM_COMMANDS:
            return
        self.problem(where, f"`{program}`: unknown command (not in the checkout, the venv or the system list)")

    def check_python(self, where: str, args: list[str]) -> None:
        if not args:
            return
        if args[0] == "-c":
            return
        if args[0] == "-m":
            module, rest = args[1], args[2:]
            if module in ("pip", "pytest", "venv", "visualdl"):
                for arg in rest:
                    if looks_like_path(arg) and not arg.startswith("-"):
                        self.check_input_path(where, arg)
                return
            if module == "paddle.distributed.launch":
                i = 0
                while i < len(rest) and rest[i].startswith("-"):
                    i += 2 if rest[i] in LAUNCH_OPTIONS_WITH_VALUES and "=" not in rest[i] else 1
                return self.check_python(where, rest[i:])
            return self.check_flags(where, ("-m", module), rest, script=f"-m {module}")
        script = args[0]
        if not os.path.isfile(os.path.join(REPO, script)):
            return self.problem(where, f"{script}: no such script")
        return self.check_flags(where, (script,), args[1:], script=script)

    def check_flags(self, where: str, invocation: tuple[str, ...], args: list[str], script: str) -> None:
        if invocation[:2] == ("-m", "ctrkit.console_help"):
            module = console_scripts()[invocation[2]]
            invocation = (os.path.join(*module.split(".")) + ".py",) if module.startswith("tools.") else ("-m", module)
        rc, text = help_text(*invocation)
        if rc != 0 or "usage" not in text.lower():
            return self.problem(where, f"`{script} --help` fails (status {rc}): {text.strip()[-300:]}")
        overrides: list[str] = []
        config = None
        i = 0
        while i < len(args):
            arg = args[i]
            if arg.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", arg) and not re.search(r"\s", arg):
                flag, has_value, value = arg.partition("=")
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                    self.problem(where, f"`{script}` has no flag {flag} (not in its --help)")
                values = [value] if has_value else []
                j = i + 1
                while not has_value and j < len(args) and not (args[j].startswith("-")
                                                                 and not re.fullmatch(r"-\d+(\.\d+)?", args[j])):
                    values.append(args[j])
                    j += 1
                if flag in ("-o", "--opt"):
                    overrides += values
                elif flag in ("-m", "--config"):
                    config = values[0] if values else None
                for v in values:
                    if flag in ("-m", "--config", "-o", "--opt"):
                        continue  # checked below
                    if flag in OUTPUT_FLAGS:
                        self.record_output(where, v)
                    elif looks_like_path(v):
                        self.check_input_path(where, v)
                i = j
            else:
                if looks_like_path(arg):
                    self.check_input_path(where, arg)
                i += 1
        for override in overrides:
            key, _, value = override.partition("=")
            if key in OUTPUT_KEYS:
                self.record_output(where, value)
            elif looks_like_path(value):
                self.check_input_path(where, value)
        if config is not None:
            self.check_input_path(where, config)
            if os.path.isfile(os.path.join(REPO, config)):
                self.check_config(where, config, overrides)

    def check_config(self, where: str, config: str, overrides: list[str]) -> None:
        code = ("import sys; import models; from ctrkit.config import load_config\n"
                "try:\n    load_config(sys.argv[1], sys.argv[2:])\n"
                "except Exception as exc:\n    print(f'{type(exc).__name__}: {exc}'); sys.exit(1)")
        result = _load_config(code, config, tuple(overrides))
        if result:
            self.problem(where, f"config {config} with {overrides}: {result}")


@functools.lru_cache(maxsize=None)
def _load_config(code: str, config: str, overrides: tuple[str, ...]) -> str:
    result = subprocess.run([PYTHON, "-c", code, config, *overrides], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    return "" if result.returncode == 0 else (result.stdout + result.stderr).strip()[-400:]


def check_doc(doc: str) -> list[str]:
    checker = DocChecker(doc)
    for line, block in bash_blocks(doc):
        for offset, tokens in logical_commands(block):
            checker.check(str(line + offset), tokens)
    return checker.problems


# ------------------------------------------------------------------------------------------------ tests

def assert_doc_clean(doc: str, check) -> None:
    """`check(doc)` finds no problems in `doc` (skipped where this checkout has no such file)."""
    if not os.path.isfile(os.path.join(REPO, doc)):
        pytest.skip(f"{doc} does not exist")
    problems = check(doc)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_command_runs_as_written(doc):
    assert_doc_clean(doc, check_doc)


def test_the_checker_finds_what_it_should(tmp_path):
    """The checker itself: the mistakes this test exists for are reported."""
    checker = DocChecker("example.md")
    block = "\n".join([
        "python tools/trainer.py -m models/rank/deepfm/config.yaml",              # venv not activated
        ".venv/bin/python tools/trainer.py -m models/rank/nope/config.yaml",      # missing config
        ".venv/bin/python tools/paddle_infer.py --model_dir output/deepfm/inference --no_such_flag 1",
        ".venv/bin/python tools/convert.py --input day_0.txt --output slot/day_0.txt",  # missing input, output in repo
        ".venv/bin/python tools/gen_data.py --rows 10 --out output/x/train \\",
        "    --seed 1",
        ".venv/bin/python tools/convert.py --input output/x/train --output output/x/slot",  # fine: produced above
        "./no_such_script.sh",
    ])
    for offset, tokens in logical_commands(block):
        checker.check(str(1 + offset), tokens)
    text = "\n".join(checker.problems)
    assert "needs the virtual environment" in text
    assert "models/rank/nope/config.yaml" in text
    assert "no flag --no_such_flag" in text
    assert "'day_0.txt' does not exist" in text and "writes 'slot/day_0.txt'" in text
    assert "output/x" not in text
    assert "no_such_script.sh: no such executable file" in text
    assert len(checker.problems) == 6, text


NEGATIVE_CLAIM = re.compile(r"does not exist|doesn't exist|not exist yet|no such (flag|option)|is not supported|"
                            r"has no `?--|there is no `?--", re.I)


def flag_claims(doc: str) -> list[str]:
    """Prose that says a flag of a tool does not exist, while the tool's --help shows it."""
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    problems = []
    for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", re.sub(r"\s+", " ", text)):
        if not NEGATIVE_CLAIM.search(sentence):
            continue
        tools = set(re.findall(r"`((?:tools|benchmarks)/\w+\.py)", sentence))
        tools |= {f"-m {m}" for m in re.findall(r"python -m (serving\.\w+)", sentence)}
        flags = set(re.findall(r"`(--[\w-]+)", sentence))
        for tool in tools:
            invocation = tuple(tool.split()) if tool.startswith("-m") else (tool,)
            if tool.startswith(("tools/", "benchmarks/")) and not os.path.isfile(os.path.join(REPO, tool)):
                continue
            rc, help_ = help_text(*invocation)
            for flag in flags:
                if rc == 0 and re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_):
                    problems.append(f"{doc}: says {flag} of {tool} does not exist, but its --help has it: "
                                    f"{sentence[:200]!r}")
    return problems


@pytest.mark.parametrize("doc", DOCS)
def test_prose_does_not_deny_existing_flags(doc):
    assert_doc_clean(doc, flag_claims)
