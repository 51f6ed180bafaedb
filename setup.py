"""How the repository's folders become an installable package (metadata, dependencies and console scripts are in
pyproject.toml; this file only says which folders ship and under what names).

In the repository the model zoo and the servers are the top-level folders `models/` and `serving/`, and the
command-line tools are scripts in `tools/` -- the layout PaddleRec and Paddle Serving users know, run as
`python tools/trainer.py ...` and `python -m serving.rpc ...`. Installed into site-packages, such generic names
would clash with other projects, so the wheel ships them under the toolkit's own names:

    ctrkit/   -> ctrkit          models/ -> ctrkit_models
    serving/  -> ctrkit_serving  tools/  -> ctrkit_tools (the console scripts, see ctrkit/console.py)

While building, absolute imports of `models`, `serving` and `tools` in the shipped sources (and module names in
string literals, e.g. `"-m", "serving.rpc"`) are rewritten to the installed names; the sources themselves keep the
repository's names. tests/test_packaging_wheel.py builds the wheel and checks the result: no top-level `models`,
`serving` or `tools`, every module imports from a fresh virtual environment, every console script runs.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import tokenize

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
RENAMES = {"models": "ctrkit_models", "serving": "ctrkit_serving", "tools": "ctrkit_tools"}
SKIP_DIRS = {"__pycache__", "tests"}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages = ["ctrkit" + p[len("ctrkit"):] for p in find_packages(HERE, include=["ctrkit", "ctrkit.*"])]
    package_dir: dict[str, str] = {}
    for folder, name in RENAMES.items():
        package_dir[name] = folder
        packages.append(name)
        for sub in find_packages(os.path.join(HERE, folder)):
            packages.append(f"{name}.{sub}")
    return sorted(packages), package_dir


def _package_data(packages: list[str], package_dir: dict[str, str]) -> dict[str, list[str]]:
    """Every file in a shipped folder that is not Python source ships as data (configs, pages, protos)."""
    data: dict[str, list[str]] = {}
    for package in packages:
        top, _, rest = package.partition(".")
        folder = os.path.join(HERE, package_dir.get(top, top), *rest.split(".")) if rest else \
            os.path.join(HERE, package_dir.get(top, top))
        files = [f for f in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, f))
                 and not f.endswith((".py", ".pyc")) and not f.startswith(".")]
        # data-only sub-folders (no __init__.py), e.g. static/ or templates/
        for sub in sorted(os.listdir(folder)):
            path = os.path.join(folder, sub)
            if os.path.isdir(path) and sub not in SKIP_DIRS and not sub.startswith(".") \
                    and not os.path.exists(os.path.join(path, "__init__.py")):
                for root, dirs, names in os.walk(path):
                    dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
                    files += [os.path.relpath(os.path.join(root, n), folder) for n in names
                              if not n.endswith(".pyc") and not n.startswith(".")]
        if files:
            data[package] = files
    return data


_NAMES = "|".join(RENAMES)
# a module path in a string: "serving.rpc", "models.rank.{name}", "-m serving.rpc" (not "docs/models.md")
_STRING_MODULE = re.compile(rf"(?<![\w/.\-])({_NAMES})(?=\.[A-Za-z_{{])")


class ImportRenameError(ValueError):
    pass


def rename_imports(source: str, path: str = "<source>") -> str:
    """Rewrite absolute imports of models/serving/tools (and module names in strings) to the installed names.
    `import models` becomes `import ctrkit_models as models`; `import models.x` without `as` is refused (it
    would bind the old name), write `from models import x` instead."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    edits: list[tuple[tuple[int, int], tuple[int, int], str]] = []
    statement: str | None = None  # "import" / "from" while inside such a statement
    expect_module = False
    for i, tok in enumerate(tokens):
        if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER) or (tok.type == tokenize.OP and tok.string == ";"):
            statement, expect_module = None, False
            continue
        if tok.type == tokenize.NAME and tok.string in ("import", "from") and statement is None:
            prev = tokens[i - 1] if i else None
            if prev is None or prev.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT,
                                             tokenize.COMMENT) or (prev.type == tokenize.OP and prev.string in (";", ":")):
                statement, expect_module = tok.string, True
                continue
        if statement == "import" and tok.type == tokenize.OP and tok.string == ",":
            expect_module = True
            continue
        if expect_module and tok.type == tokenize.NAME:
            expect_module = False
            if tok.string in RENAMES:
                new = RENAMES[tok.string]
                nxt = tokens[i + 1]
                if statement == "import":
                    if nxt.type == tokenize.OP and nxt.string == ".":
                        # import models.x [as y]: fine only with `as`
                        j = i + 1
                        while tokens[j].string == "." and tokens[j + 1].type == tokenize.NAME:
                            j += 2
                        if tokens[j].string != "as":
                            raise ImportRenameError(
                                f"{path}:{tok.start[0]}: `import {tok.string}.…` without `as` cannot be packaged; "
                                f"write `from {tok.string}... import ...` or add `as`")
                    elif not (nxt.type == tokenize.NAME and nxt.string == "as"):
                        new = f"{new} as {tok.string}"
                edits.append((tok.start, tok.end, new))
            continue
        if tok.type == tokenize.STRING:
            new = _STRING_MODULE.sub(lambda m: RENAMES[m[1]], tok.string)
            if new != tok.string:
                edits.append((tok.start, tok.end, new))
    if not edits:
        return source
    lines = source.splitlines(keepends=True)
    for (srow, scol), (erow, ecol), new in reversed(edits):
        lines[srow - 1:erow] = [lines[srow - 1][:scol] + new + lines[erow - 1][ecol:]]
    return "".join(lines)


class BuildPyRenamed(build_py):
    """build_py that rewrites the repository's package names to the installed ones in every shipped module."""

    def build_module(self, module, module_file, package):
        outfile, copied = super().build_module(module, module_file, package)
        if outfile.endswith(".py") and not self.dry_run:
            with open(outfile, encoding="utf-8") as f:
                source = f.read()
            renamed = rename_imports(source, module_file)
            if renamed != source:
                with open(outfile, "w", encoding="utf-8") as f:
                    f.write(renamed)
        return outfile, copied

    def run(self):
        # a stale build/lib (an earlier build in this checkout) would ship modules deleted since: start clean
        if not self.dry_run:
            for name in ("ctrkit", *RENAMES.values()):
                shutil.rmtree(os.path.join(self.build_lib, name), ignore_errors=True)
        super().run()
        # tools/ is a folder of scripts, not a package: give the installed copy an __init__.py
        init = os.path.join(self.build_lib, "ctrkit_tools", "__init__.py")
        if not self.dry_run and not os.path.exists(init):
            with open(init, "w", encoding="utf-8") as f:
                f.write('"""The command-line tools (tools/*.py in the repository); run them as console scripts, '
                        'see ctrkit.console."""\n')


if __name__ == "__main__":  # (setuptools runs this file as __main__; tests import it for rename_imports)
    PACKAGES, PACKAGE_DIR = _packages()
    setup(
        packages=PACKAGES,
        package_dir=PACKAGE_DIR,
        package_data=_package_data(PACKAGES, PACKAGE_DIR),
        cmdclass={"build_py": BuildPyRenamed},
    )
