"""Writing directories so that readers never see a half-written one."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def staged_directory(final_dir: str) -> Iterator[str]:
    """Yield a new hidden sibling of `final_dir` to fill; when the block succeeds it replaces `final_dir`
    (removing an older one), when it raises it is deleted. A crash leaves at most a hidden `.name.tmp-*`
    directory, never a partial `final_dir`."""
    parent = os.path.dirname(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.tmp-", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp makes it private; servers under other users must read what it holds
    try:
        yield staging
        if os.path.isdir(final_dir):
            shutil.rmtree(final_dir)
        os.rename(staging, final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
