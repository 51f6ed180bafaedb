"""Training checkpoints: `<model_save_path>/<epoch>/rec.pdparams` (+ `rec.pdopt`, `checkpoint.json`).

Same layout and file names as PaddleRec, so its checkpoints load here and ours load there. Each epoch
directory is written to a temporary sibling and renamed into place, so a crash never leaves a half-written
checkpoint behind: an epoch directory either exists completely or not at all.
"""
from __future__ import annotations

import json
import os
import re

import paddle

from ctrkit.fsutil import staged_directory

PARAMS_FILE = "rec.pdparams"
OPTIMIZER_FILE = "rec.pdopt"
INFO_FILE = "checkpoint.json"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(save_path: str, epoch: int, model: paddle.nn.Layer, optimizer=None,
                    info: dict | None = None) -> str:
    """Atomically write epoch `epoch`'s checkpoint; returns its directory."""
    final_dir = os.path.join(save_path, str(epoch))
    try:
        with staged_directory(final_dir) as tmp_dir:
            paddle.save(model.state_dict(), os.path.join(tmp_dir, PARAMS_FILE))
            if optimizer is not None:
                paddle.save(optimizer.state_dict(), os.path.join(tmp_dir, OPTIMIZER_FILE))
            with open(os.path.join(tmp_dir, INFO_FILE), "w", encoding="utf-8") as f:
                json.dump({"epoch": epoch, **(info or {})}, f, indent=1)
    except OSError as exc:  # unwritable path, disk full: the user's to fix; nothing half-written is left
        raise CheckpointError(f"cannot write checkpoint {final_dir}: {exc.strerror or exc}") from None
    return final_dir


def completed_epochs(save_path: str) -> list[int]:
    """Epoch numbers that have a complete checkpoint under `save_path`, ascending."""
    if not os.path.isdir(save_path):
        return []
    return sorted(int(d) for d in os.listdir(save_path)
                  if re.fullmatch(r"\d+", d) and os.path.isfile(os.path.join(save_path, d, PARAMS_FILE)))


def checkpoint_dirs(save_path: str) -> list[str]:
    """The epoch checkpoint directories under `save_path` (numbered, holding parameters), by epoch."""
    return [os.path.join(save_path, str(epoch)) for epoch in completed_epochs(save_path)]


def read_info(checkpoint_dir: str) -> dict | None:
    """The checkpoint's `checkpoint.json` (None for a checkpoint without one, e.g. PaddleRec's)."""
    path = os.path.join(checkpoint_dir, INFO_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint record: {exc}") from None
    return info if isinstance(info, dict) else None


def run_differences(recorded: dict, current: dict) -> list[str]:
    """What makes a checkpoint of config `recorded` unfit for resuming under config `current` (both
    `Config.to_dict()`): the model, its hyper-parameters, the optimizer class, the dataset. The learning rate and
    the runner's other keys may change between runs; a hyper-parameter only one side records is no difference."""
    def flat(config: dict) -> dict:
        hp = dict(config.get("hyper_parameters") or {})
        optimizer = hp.pop("optimizer", {}) or {}
        out = {"runner.model": (config.get("runner") or {}).get("model"),
               "hyper_parameters.optimizer.class": optimizer.get("class")}
        out.update({f"hyper_parameters.{k}": v for k, v in hp.items()})
        out["dataset"] = config.get("dataset") or None
        return out

    old, new = flat(recorded), flat(current)
    # hyper-parameters one side does not record (a key added since) are not differences
    return [f"{key}: {old[key]!r} in the checkpoint, {new[key]!r} now"
            for key in sorted(set(old) & set(new)) if old[key] != new[key]]


def check_same_run(checkpoint_dir: str, config: dict) -> None:
    """Raise CheckpointError when the checkpoint was written by a run with another model, hyper-parameters or
    dataset than `config` (a `Config.to_dict()`); checkpoints without a record are checked by shape on loading."""
    info = read_info(checkpoint_dir)
    if not info or "config" not in info:
        return
    differences = run_differences(info["config"], config)
    if differences:
        raise CheckpointError(
            f"cannot resume from {checkpoint_dir}: it belongs to another run ({'; '.join(differences[:4])}). "
            f"Use another runner.model_save_path, the same settings, or -o runner.resume=false to remove the "
            f"earlier run's checkpoints")


def params_path(checkpoint_dir: str) -> str:
    """Accepts a checkpoint directory or a `.pdparams` file path."""
    path = checkpoint_dir if checkpoint_dir.endswith(".pdparams") else os.path.join(checkpoint_dir, PARAMS_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint parameters at {path}")
    return path


def load_model_state(model: paddle.nn.Layer, checkpoint_dir: str) -> None:
    """Load parameters into `model`; every parameter must be present with the right shape."""
    path = params_path(checkpoint_dir)
    state = paddle.load(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit model {getattr(model, 'model_name', '?')}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in expected.items():
        if list(state[name].shape) != list(tensor.shape):
            raise CheckpointError(f"{path}: parameter {name} has shape {list(state[name].shape)}, "
                                  f"model expects {list(tensor.shape)}")
    model.set_state_dict(state)


def load_optimizer_state(optimizer, checkpoint_dir: str) -> None:
    path = os.path.join(checkpoint_dir, OPTIMIZER_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"no optimizer state at {path}; cannot resume")
    optimizer.set_state_dict(paddle.load(path))
