"""Evaluation: score checkpoints on the test data with exact AUC and logloss, optionally writing predictions."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable

import numpy as np
import paddle

from ctrkit import checkpoint
from ctrkit.config import Config, ConfigError
from ctrkit.data import Batch
from ctrkit.distributed import Context
from ctrkit.metrics import auc, logloss
from ctrkit.predictions import write_predictions
from ctrkit.training.device import start_run
from ctrkit.training.progress import visualdl_writer
from ctrkit.training.sources import eval_batches, open_source
from ctrkit.zoo import ModelMismatchError, build_model_for_checkpoint

log = logging.getLogger("ctrkit.training")


def _predict_batches(model, batches: Iterable[Batch]) -> tuple[list[np.ndarray] | None, list[np.ndarray]]:
    """Per batch: labels (None when any batch has none) and probabilities, flat."""
    model.eval()
    labels, probs = [], []
    with paddle.no_grad():
        for batch in batches:
            probs.append(model(paddle.to_tensor(batch.dense), paddle.to_tensor(batch.sparse)).numpy().ravel())
            labels.append(None if batch.label is None else batch.label.ravel())
    has_labels = bool(labels) and all(lab is not None for lab in labels)
    return (labels if has_labels else None), probs


def _flat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def predict(model, batches: Iterable[Batch]) -> tuple[np.ndarray | None, np.ndarray]:
    """Run `model` over `batches` without gradients; returns (labels or None, probabilities), both flat."""
    labels, probs = _predict_batches(model, batches)
    return (None if labels is None else _flat(labels)), _flat(probs)


def _gather_in_order(parts: list[np.ndarray], context: Context) -> np.ndarray:
    """Every worker's per-batch slices, reassembled in row order: batch by batch, slices in rank order."""
    every = context.gather(parts)
    return _flat([piece for batch in zip(*every) for piece in batch])


def evaluate(config: Config, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Score checkpoints of epochs [infer_start_epoch, infer_end_epoch) on runner.test_data_dir (data-parallel
    with runner.use_fleet: every worker scores its slice and all predictions are gathered for one AUC)."""
    context, _ = start_run(config)
    load_path = config.runner["infer_load_path"] or config.runner["model_save_path"]
    _check_epochs_exist(config, load_path)
    # the model and hyper-parameters the checkpoints were trained with (no need to repeat training's -o); the
    # test data is then read with them (e.g. the recorded sparse_feature_number)
    try:
        model = build_model_for_checkpoint(config, os.path.join(load_path, str(config.runner["infer_start_epoch"])),
                                           logger=log)
    except ModelMismatchError as exc:
        raise ConfigError(str(exc)) from None
    config = dataclasses.replace(config, hyper_parameters={**model.hp,
                                                           "optimizer": config.hyper_parameters["optimizer"]})
    source = open_source(config, "test_data_dir")
    results = []
    writer = visualdl_writer(config, context, kind="eval")
    try:
        results = _evaluate_epochs(config, context, source, load_path, model, writer, on_epoch)
    finally:
        if writer is not None:
            writer.close()
    context.barrier()
    return results


def _check_epochs_exist(config: Config, load_path: str) -> None:
    """Every asked-for epoch has a checkpoint; else a CheckpointError saying which epochs there are."""
    wanted = range(config.runner["infer_start_epoch"], config.runner["infer_end_epoch"])
    available = checkpoint.completed_epochs(load_path)
    missing = [epoch for epoch in wanted if epoch not in available]
    if not missing:
        return
    where = "runner.infer_load_path" if config.runner["infer_load_path"] else "runner.model_save_path"
    have = (f"it holds epoch(s) {', '.join(map(str, available))}" if available
            else "it holds no checkpoints (train first with tools/trainer.py)")
    raise checkpoint.CheckpointError(
        f"{where}={load_path}: no checkpoint for epoch(s) {', '.join(map(str, missing))} (runner.infer_start_epoch="
        f"{wanted.start}, runner.infer_end_epoch={wanted.stop} ask for [{wanted.start}, {wanted.stop})); {have}")


def _evaluate_epochs(config, context, source, load_path, model, writer, on_epoch) -> list[dict]:
    results = []
    for epoch in range(config.runner["infer_start_epoch"], config.runner["infer_end_epoch"]):
        checkpoint.load_model_state(model, os.path.join(load_path, str(epoch)))
        start = time.perf_counter()
        label_parts, prob_parts = _predict_batches(model, eval_batches(config, source, context))
        labeled = context.gather(label_parts is not None)
        probs = _gather_in_order(prob_parts, context)
        labels = _gather_in_order(label_parts, context) if all(labeled) else None
        seconds = time.perf_counter() - start
        from ctrkit.training.loop import TrainingError

        if probs.size == 0:
            raise TrainingError(f"runner.test_data_dir={config.runner['test_data_dir']}: no test rows (empty files)")
        if not np.isfinite(probs).all():
            raise TrainingError(f"the checkpoint of epoch {epoch} in {load_path} predicts NaN or infinity for "
                                f"{int((~np.isfinite(probs)).sum())} of {probs.size} rows (a diverged model)")
        result = {"epoch": epoch,
                  "auc": auc(labels, probs) if labels is not None else None,
                  "logloss": logloss(labels, probs) if labels is not None else None,
                  "samples": int(probs.size),
                  "samples_per_s": round(probs.size / seconds, 1) if seconds > 0 else None}
        if context.distributed:
            result["workers"] = context.world
        if config.runner["infer_output"]:
            multi = config.runner["infer_end_epoch"] - config.runner["infer_start_epoch"] > 1
            out = config.runner["infer_output"] + (f".{epoch}" if multi else "")
            if context.is_main:
                try:
                    write_predictions(out, probs)
                except OSError as exc:  # an unwritable place: the user's to fix (nothing half-written is left)
                    raise ConfigError(f"runner.infer_output: cannot write {out}: {exc.strerror or exc}") from None
            result["predictions"] = out
        if writer is not None and result["auc"] is not None:
            writer.add_scalar(tag="eval/auc", step=epoch, value=result["auc"])
            writer.add_scalar(tag="eval/logloss", step=epoch, value=result["logloss"])
        if on_epoch is not None:
            on_epoch(result)
        results.append(result)
    return results
