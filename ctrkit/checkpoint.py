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
    with staged_directory(final_dir) as tmp_dir:
        paddle.save(model.state_dict(), os.path.join(tmp_dir, PARAMS_FILE))
        if optimizer is not None:
            paddle.save(optimizer.state_dict(), os.path.join(tmp_dir, OPTIMIZER_FILE))
        with open(os.path.join(tmp_dir, INFO_FILE), "w", encoding="utf-8") as f:
            json.dump({"epoch": epoch, **(info or {})}, f, indent=1)
    return final_dir


def completed_epochs(save_path: str) -> list[int]:
    """Epoch numbers that have a complete checkpoint under `save_path`, ascending."""
    if not os.path.isdir(save_path):
        return []
    return sorted(int(d) for d in os.listdir(save_path)
                  if re.fullmatch(r"\d+", d) and os.path.isfile(os.path.join(save_path, d, PARAMS_FILE)))


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
