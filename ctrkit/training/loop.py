"""The training loop: one epoch (`train_one_epoch`), resume, checkpoints after every epoch (`train`).

Never mixes runs: `runner.resume=false` removes the checkpoints an earlier run left in `runner.model_save_path`
(and says so); a resume first checks that the checkpoint was made with the same model, hyper-parameters and
dataset (a CheckpointError naming the difference otherwise). A run that trains on no rows, or whose loss stops
being finite, stops with a TrainingError and writes no checkpoint for that epoch (earlier epochs stay)."""
from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable

import numpy as np
import paddle
import paddle.nn.functional as F

from ctrkit import checkpoint
from ctrkit.config import Config, ConfigError
from ctrkit.distributed import Context
from ctrkit.training.device import seed_everything, start_run
from ctrkit.training.lookups import UniqueIdLookups
from ctrkit.training.model import build_configured_model
from ctrkit.training.optim import build_optimizer
from ctrkit.training.progress import Progress, visualdl_writer
from ctrkit.training.sources import open_source, train_batches

log = logging.getLogger("ctrkit.training")


class TrainingError(RuntimeError):
    """The run cannot go on (no training rows, a loss that is no longer finite); the message says what to do."""


def _padding_batch(model) -> tuple[paddle.Tensor, ...]:
    """One all-missing row: a worker whose data ran out steps with it (at weight 0) while others still have data,
    since DataParallel needs every worker in every step, with a gradient for every sparse table."""
    dense_spec, sparse_spec = model.input_specs()[:2]
    return (paddle.zeros([1, dense_spec.shape[1]], dtype="float32"),
            paddle.zeros([1, sparse_spec.shape[1]], dtype="int64"), paddle.zeros([1, 1], dtype="float32"))


def check_finite_loss(loss: float, epoch: int, step: int) -> None:
    """A TrainingError when `loss` is NaN or infinite: the model diverged. (In a distributed job the worker that
    sees it first stops, and the job with it, see ctrkit/distributed.py.)"""
    if not math.isfinite(loss):
        raise TrainingError(f"epoch {epoch} step {step}: the training loss became {loss} (the model diverged); "
                            f"lower hyper_parameters.optimizer.learning_rate")


def train_one_epoch(model, optimizer, batches: Iterable[tuple[paddle.Tensor, ...]], progress: Progress,
                    context: Context = Context(), network: paddle.nn.Layer | None = None,
                    on_step: Callable[[dict], None] | None = None) -> dict:
    """One pass over `batches`. `network` is what runs the forward pass (DataParallel(model) in a distributed job);
    steps continue while any worker has data. `on_step` (see `train`) is called after every optimizer step."""
    network = network or model
    model.train()
    iterator = iter(batches)
    exhausted = False  # a DataLoader iterator must not be advanced past its end (it raises, not StopIteration)
    while True:
        item = None if exhausted else next(iterator, None)
        exhausted = item is None
        if item is not None and len(item) != 3:
            raise ConfigError("training data has no click labels (runner.train_data_dir)")
        rows = 0 if item is None else int(item[0].shape[0])
        total = int(context.sum([rows])[0]) if context.distributed else rows
        if total == 0:
            break
        dense, sparse, label = item if rows else _padding_batch(model)
        prob = network(dense, sparse)
        probs = prob.numpy()
        if not np.isfinite(probs).all():  # (the loss kernel refuses them: check first)
            check_finite_loss(float(np.sum(probs)), progress.epoch, progress.steps + 1)
        loss_sum = F.binary_cross_entropy(prob, label, reduction="sum")
        loss_value = float(loss_sum) if rows else 0.0
        check_finite_loss(loss_value, progress.epoch, progress.steps + 1)
        # DataParallel averages gradients over workers: this weight makes the result the mean over all rows
        total_loss = loss_sum * (context.world / total if rows else 0.0)
        for regularization in (model.regularization_loss(), model.embedding_l2_loss(sparse)):
            if regularization is not None:
                total_loss = total_loss + regularization
        total_loss.backward()
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)
        if rows:
            progress.update(loss_value, label.numpy(), probs)
        else:
            progress.update(0.0, np.zeros((0, 1), np.float32), np.zeros((0, 1), np.float32))
        if on_step is not None:
            on_step({"epoch": progress.epoch, "step": progress.steps, "rank": context.rank, "model": model,
                     "batch": (dense, sparse, label) if rows else None})
    return progress.close()


def _clear_earlier_run(config: Config, context: Context) -> None:
    """runner.resume=false: remove the epoch checkpoints an earlier run left in model_save_path (saying so), so
    that its later epochs are never taken for this run's."""
    save_path = config.runner["model_save_path"]
    done = checkpoint.checkpoint_dirs(save_path)
    init = config.runner["model_init_path"]
    if done and init and os.path.abspath(init).startswith(os.path.abspath(save_path) + os.sep):
        raise ConfigError(f"runner.model_init_path={init} is inside runner.model_save_path={save_path}, which "
                          f"runner.resume=false clears; copy it elsewhere or use another runner.model_save_path")
    if not done or not context.is_main:
        return
    log.warning("runner.resume=false: removing %d checkpoint(s) of an earlier run from %s (epochs %s)", len(done),
                save_path, ", ".join(os.path.basename(d) for d in done))
    for directory in done:
        shutil.rmtree(directory)


def _resume_point(config: Config, model, optimizer, context: Context) -> int:
    """First epoch to train: after the last complete checkpoint when resuming, else 0 (or model_init_path)."""
    save_path = config.runner["model_save_path"]
    if not config.runner["resume"]:
        _clear_earlier_run(config, context)
        context.barrier()
    done = checkpoint.completed_epochs(save_path) if config.runner["resume"] else []
    context.agree(done, f"the complete checkpoints in runner.model_save_path={save_path} (every worker must see "
                        f"the same directory, e.g. on shared storage)")
    if done:
        last_dir = os.path.join(save_path, str(done[-1]))
        checkpoint.check_same_run(last_dir, config.to_dict())
        checkpoint.load_model_state(model, last_dir)
        checkpoint.load_optimizer_state(optimizer, last_dir)
        log.info("resuming after epoch %d from %s", done[-1], last_dir)
        return done[-1] + 1
    if config.runner["model_init_path"]:
        checkpoint.load_model_state(model, config.runner["model_init_path"])
        log.info("initialised parameters from %s", config.runner["model_init_path"])
    return 0


def train(config: Config, on_step: Callable[[dict], None] | None = None) -> dict:
    """Train `config`'s model; returns a summary with per-epoch stats and the last checkpoint directory.
    `on_step(info)` runs after every optimizer step with info = {"epoch", "step" (1-based), "rank", "model",
    "batch": this worker's (dense, sparse, label) tensors, None for a padding step}."""
    context, device = start_run(config)
    seed_everything(config.runner["seed"])
    source = open_source(config, "train_data_dir")
    if source.shards is not None and not source.shards.labeled:
        raise ConfigError(f"runner.train_data_dir: {source.shards.directory} has no click labels")
    model = build_configured_model(config)
    optimizer = build_optimizer(model, config.hyper_parameters["optimizer"])
    first_epoch = _resume_point(config, model, optimizer, context)
    epochs = config.runner["epochs"]
    if first_epoch >= epochs:
        log.info("all %d epoch(s) already trained in %s; nothing to do (set runner.resume=false to retrain)",
                 epochs, config.runner["model_save_path"])
    network = context.wrap(model)
    lookups = UniqueIdLookups(model) if device == "cpu" and config.runner["unique_id_lookups"] else None
    writer = visualdl_writer(config, context)
    info = {"model": config.model_name, "config": config.to_dict(), "workers": context.world,
            **model.describe()}  # model_name, complete hyper_parameters, schema: what export/infer rebuild from
    epoch_stats, last_dir, global_step = [], None, 0
    # this worker's samples per epoch, for the progress bar's total and ETA: known for shards, and for text once
    # an epoch has been read
    expected = -(-source.shards.rows // context.world) if source.shards is not None else None
    try:
        for epoch in range(first_epoch, epochs):
            progress = Progress(config, epoch, writer, global_step, context, total=expected)
            try:
                stats = train_one_epoch(model, optimizer, train_batches(config, source, epoch, context), progress,
                                        context, network, on_step)
            except TrainingError as exc:
                progress.bar.close()
                raise TrainingError(f"{exc}. Stopped without saving epoch {epoch}; "
                                    + (f"the last good checkpoint is {last_dir}" if last_dir else
                                       _earlier_checkpoint(config, first_epoch))) from None
            if stats["samples"] == 0:
                skipped = ", or every line skipped as malformed" if config.runner["skip_bad_lines"] else ""
                raise TrainingError(f"runner.train_data_dir={config.runner['train_data_dir']}: no training rows "
                                    f"(empty files{skipped}); nothing was trained and no checkpoint written")
            global_step, expected = progress.global_step, progress.samples
            last_dir = os.path.join(config.runner["model_save_path"], str(epoch))
            if context.is_main:
                checkpoint.save_checkpoint(config.runner["model_save_path"], epoch, model, optimizer,
                                           info={**info, "train": stats})
                log.info("epoch %d done: %d samples, loss %.5f, %.0f samples/s; checkpoint %s", epoch,
                         stats["samples"], stats["loss"], stats["samples_per_s"], last_dir)
            context.barrier()  # the checkpoint exists for every worker once train() returns
            epoch_stats.append(stats)
    finally:
        if lookups is not None:
            lookups.remove()
        if writer is not None:
            writer.close()
    samples = sum(s["samples"] for s in epoch_stats)
    seconds = sum(s["seconds"] for s in epoch_stats)
    return {"model": config.model_name, "device": device, "workers": context.world, "rank": context.rank,
            "first_epoch": first_epoch, "epochs": epoch_stats, "samples": samples,
            "samples_per_s": samples / seconds if seconds else 0.0, "checkpoint": last_dir}


def _earlier_checkpoint(config: Config, first_epoch: int) -> str:
    if first_epoch > 0:
        return f"the last good checkpoint is {os.path.join(config.runner['model_save_path'], str(first_epoch - 1))}"
    return "no checkpoint was written"
