"""Numbered model versions with hot swap.

A model directory is either one model (DIR holds `model_meta.json`, directly or in `serving_server/`; served as
version 0) or a directory of numbered versions (`DIR/1/`, `DIR/2/`, ... each a serving_server or export
directory). The
highest version that loads and passes its self-check is served. A background watcher (and SIGHUP) looks for
a higher version: it is loaded and self-checked next to the serving one, then swapped in with one reference
assignment. Requests hold a reference to the version they started on, so nothing in flight fails; the old
version is closed when its last request is done. A version that fails is refused, logged and counted, and
the old one keeps serving; it is retried only if its files change (e.g. it was still being copied).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

from ctrkit.inference import META_FILE, InferenceError
from ctrkit.serving_config import SERVER_DIR

log = logging.getLogger(__name__)

UNVERSIONED = 0


class NotReadyError(RuntimeError):
    """No model version is loaded (not started yet, none passed its checks, or shutting down)."""


class ModelLoadError(InferenceError):
    """No version of the model directory could be loaded at start (each version's reason in the message): a
    user error (wrong path, a model that fails its golden check), reported as one line by every entry point."""


class Servable(Protocol):
    version: int

    def close(self) -> None: ...


@dataclass
class _Slot:
    """A loaded version and the requests currently using it."""

    model: Servable
    inflight: int = 0
    retired: bool = False


def is_model_dir(path: str) -> bool:
    return (os.path.isfile(os.path.join(path, META_FILE))
            or os.path.isfile(os.path.join(path, SERVER_DIR, META_FILE)))


def list_versions(root: str) -> dict[int, str]:
    """version -> directory; {0: root} for a single unversioned model."""
    if is_model_dir(root):
        return {UNVERSIONED: root}
    if not os.path.isdir(root):
        raise FileNotFoundError(f"model directory {root} does not exist")
    return {int(name): os.path.join(root, name) for name in os.listdir(root)
            if name.isdigit() and os.path.isdir(os.path.join(root, name))}


def _fingerprint(path: str) -> tuple:
    """Names, sizes and modification times of every file under `path` (changes while a copy is under way)."""
    entries = []
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


class VersionManager:
    """Owns the served version; `acquire()`/`release()` bracket every request."""

    def __init__(self, root: str, load: Callable[[str, int], Servable],
                 on_change: Callable[[str, int], None] = lambda result, version: None):
        self.root = root
        self._load = load
        self._on_change = on_change  # (result "loaded" | "refused", version): metrics hook
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        self._slot: _Slot | None = None
        self._retiring: dict[int, _Slot] = {}  # id(model) -> slot of a swapped-out version still in use
        self._refused: dict[int, tuple] = {}  # version -> fingerprint when refused
        self._errors: dict[int, str] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # ----------------------------------------------------------------------------------- requests
    def acquire(self) -> Servable:
        with self._lock:
            if self._slot is None:
                raise NotReadyError("no model version is loaded")
            self._slot.inflight += 1
            return self._slot.model

    def release(self, model: Servable) -> None:
        with self._lock:
            slot = self._slot if self._slot is not None and self._slot.model is model else self._retiring[id(model)]
            slot.inflight -= 1
            done = slot.retired and slot.inflight == 0
            if done:
                del self._retiring[id(model)]
        if done:
            self._close(slot.model)

    @property
    def current(self) -> Servable | None:
        slot = self._slot
        return None if slot is None else slot.model

    @property
    def version(self) -> int | None:
        model = self.current
        return None if model is None else model.version

    def status(self) -> dict:
        """For GET /versions: what is served, what is on disk, what was refused and why."""
        try:
            on_disk: list[int] | str = sorted(list_versions(self.root))
        except OSError as e:
            on_disk = f"cannot list: {e}"
        return {"model_dir": self.root, "serving": self.version, "available": on_disk,
                "refused": {str(v): self._errors.get(v, "") for v in sorted(self._refused)}}

    # ------------------------------------------------------------------------------------ loading
    def load_initial(self) -> int:
        """Serve the highest version that loads; raise ModelLoadError when none does."""
        versions = list_versions(self.root)
        if not versions:
            raise ModelLoadError(f"{self.root} holds neither an exported model ({META_FILE}) nor numbered "
                               "version directories (1/, 2/, ...) of them")
        for version in sorted(versions, reverse=True):
            if self._try_load(version, versions[version]):
                return version
        raise ModelLoadError(f"no version under {self.root} could be loaded: "
                           + "; ".join(f"{v}: {self._errors[v]}" for v in sorted(self._errors)))

    def check_now(self) -> None:
        """Load and swap in a newer version if one is on disk (the watcher and SIGHUP call this)."""
        with self._check_lock:
            try:
                versions = list_versions(self.root)
            except OSError as e:
                log.warning("cannot list model versions in %s: %s", self.root, e)
                return
            current = self.version if self.version is not None else -1
            for version in sorted((v for v in versions if v > current), reverse=True):
                path = versions[version]
                if version in self._refused and self._refused[version] == _fingerprint(path):
                    continue
                if self._try_load(version, path):
                    return

    def _try_load(self, version: int, path: str) -> bool:
        fingerprint = _fingerprint(path)
        try:
            model = self._load(path, version)
        except Exception as e:  # a bad version must never take the server down
            log.error("model version %d (%s) refused: %s", version, path, e)
            self._refused[version] = fingerprint
            self._errors[version] = f"{type(e).__name__}: {e}"
            self._on_change("refused", version)
            return False
        self._refused.pop(version, None)
        self._errors.pop(version, None)
        self._swap(model)
        self._on_change("loaded", version)
        log.info("serving model version %d from %s", version, path)
        return True

    def _swap(self, model: Servable | None) -> None:
        """Serve `model` (None: nothing); the old version closes once its last request is done."""
        with self._lock:
            old, self._slot = self._slot, (_Slot(model) if model is not None else None)
            if old is None:
                return
            old.retired = True
            idle = old.inflight == 0
            if not idle:
                self._retiring[id(old.model)] = old
        if idle:
            self._close(old.model)

    @staticmethod
    def _close(model: Servable) -> None:
        try:
            model.close()
            log.info("closed model version %d", model.version)
        except Exception:
            log.exception("closing model version %d failed", model.version)

    # ------------------------------------------------------------------------------------ watcher
    def start_watcher(self, interval_s: float) -> None:
        """Poll for new versions every `interval_s` (0: only on `wake()`, e.g. SIGHUP)."""
        def loop() -> None:
            while not self._stop.is_set():
                self._wake.wait(interval_s if interval_s > 0 else None)
                self._wake.clear()
                if not self._stop.is_set():
                    self.check_now()

        self._watcher = threading.Thread(target=loop, name="version-watcher", daemon=True)
        self._watcher.start()

    def wake(self) -> None:
        self._wake.set()

    def shutdown(self) -> None:
        """Stop watching and retire the served version (closed at once, or by its last request in flight)."""
        self._stop.set()
        self._wake.set()
        with self._check_lock:
            self._swap(None)
