"""Training and evaluation loops behind `tools/trainer.py` and `tools/infer.py`.

`train(config)` trains the configured model epoch by epoch, writing an atomic checkpoint after each epoch and
resuming from the last complete one (parameters, optimizer state, epoch) when `runner.resume` is true.
`evaluate(config)` scores the checkpoints of epochs [infer_start_epoch, infer_end_epoch) on the test data with
exact AUC and logloss.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable

import numpy as np
import paddle
import paddle.nn.functional as F

from ctrkit import checkpoint
from ctrkit.config import Config, ConfigError
from ctrkit.data import Batch, iter_batches, list_data_files
from ctrkit.data.paddle_dataset import BatchDataset
from ctrkit.metrics import auc, logloss
from models.registry import build_model

log = logging.getLogger("ctrkit.training")


class DeviceError(RuntimeError):
    """The configured device is not available in this build or on this machine."""


def select_device(use_gpu: bool) -> str:
    """Set Paddle's device; a GPU request this build or machine cannot serve is an error, never a CPU fallback."""
    if not use_gpu:
        paddle.set_device("cpu")
        return "cpu"
    if not paddle.is_compiled_with_cuda():
        raise DeviceError("runner.use_gpu is true but this paddlepaddle build has no CUDA support "
                          f"(paddle {paddle.__version__}); install a GPU build or set runner.use_gpu=false")
    if paddle.device.cuda.device_count() == 0:
        raise DeviceError("runner.use_gpu is true but no CUDA device is visible")
    paddle.set_device("gpu:0")
    return "gpu:0"


def build_optimizer(model: paddle.nn.Layer, optimizer_config: dict) -> paddle.optimizer.Optimizer:
    name, lr = optimizer_config["class"], optimizer_config["learning_rate"]
    params = model.parameters()
    if name == "Adam":
        return paddle.optimizer.Adam(learning_rate=lr, parameters=params, lazy_mode=optimizer_config["lazy_mode"])
    if name == "SGD":
        return paddle.optimizer.SGD(learning_rate=lr, parameters=params)
    if name == "Adagrad":
        return paddle.optimizer.Adagrad(learning_rate=lr, parameters=params)
    raise ConfigError(f"hyper_parameters.optimizer.class: unsupported optimizer {name!r}")


def seed_everything(seed: int) -> None:
    paddle.seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _data_files(config: Config, key: str) -> list[str]:
    path = config.runner[key]
    if not path:
        raise ConfigError(f"runner.{key} is not set")
    try:
        return list_data_files(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"runner.{key}: {exc}") from None


class _Progress:
    """Progress bar (samples/s, loss, AUC over the recent window), periodic log lines, optional VisualDL."""

    def __init__(self, config: Config, epoch: int, writer, global_step: int):
        from tqdm import tqdm

        self.print_interval = config.runner["print_interval"]
        self.bar = tqdm(desc=f"epoch {epoch}", unit=" samples", unit_scale=True, mininterval=1.0,
                        disable=os.environ.get("CTRKIT_NO_PROGRESS") == "1")
        self.epoch, self.writer, self.global_step = epoch, writer, global_step
        self.start = time.perf_counter()
        self.samples = self.steps = 0
        self.loss_sum = 0.0
        self.window_labels: list[np.ndarray] = []
        self.window_probs: list[np.ndarray] = []

    def update(self, loss: float, labels: np.ndarray, probs: np.ndarray) -> None:
        self.steps += 1
        self.global_step += 1
        self.samples += labels.shape[0]
        self.loss_sum += loss
        self.window_labels.append(labels)
        self.window_probs.append(probs)
        self.bar.update(labels.shape[0])
        if self.steps % self.print_interval == 0:
            self._report()

    def _report(self) -> None:
        window_auc = auc(np.concatenate(self.window_labels), np.concatenate(self.window_probs))
        self.window_labels.clear()
        self.window_probs.clear()
        avg_loss = self.loss_sum / self.steps
        rate = self.samples / (time.perf_counter() - self.start)
        self.bar.set_postfix(loss=f"{avg_loss:.4f}", auc=f"{window_auc:.4f}")
        log.info("epoch %d step %d: loss %.5f, auc(last %d steps) %.5f, %.0f samples/s",
                 self.epoch, self.steps, avg_loss, self.print_interval, window_auc, rate)
        if self.writer is not None:
            self.writer.add_scalar(tag="train/loss", step=self.global_step, value=avg_loss)
            self.writer.add_scalar(tag="train/auc", step=self.global_step, value=window_auc)
            self.writer.add_scalar(tag="train/samples_per_s", step=self.global_step, value=rate)

    def close(self) -> dict:
        self.bar.close()
        seconds = time.perf_counter() - self.start
        return {"epoch": self.epoch, "steps": self.steps, "samples": self.samples,
                "loss": self.loss_sum / max(self.steps, 1), "seconds": seconds,
                "samples_per_s": self.samples / seconds if seconds > 0 else 0.0}


def _visualdl_writer(config: Config):
    if not config.runner["use_visual"]:
        return None
    from visualdl import LogWriter

    return LogWriter(logdir=config.runner["visual_log_path"])


def _train_batches(config: Config, files: list[str], epoch: int) -> Iterable[tuple[paddle.Tensor, ...]]:
    """This epoch's shuffled (dense, sparse, label) tensors. The shuffle depends only on (seed, epoch), so a
    resumed run sees the same data order as an uninterrupted one. With runner.num_workers > 0, DataLoader
    worker processes parse while this process trains (each worker reads its own shard of the data)."""
    options = dict(shuffle_buffer=config.runner["shuffle_buffer"], seed=config.runner["seed"] * 1000 + epoch,
                   skip_bad=config.runner["skip_bad_lines"])
    spec, batch_size = config.feature_spec(), config.runner["train_batch_size"]
    workers = config.runner["num_workers"]
    if workers == 0:
        return (tuple(paddle.to_tensor(a) for a in batch if a is not None)
                for batch in iter_batches(files, spec, batch_size, **options))
    dataset = BatchDataset(files, spec, batch_size, **options)
    return paddle.io.DataLoader(dataset, batch_size=None, num_workers=workers)


def train_one_epoch(model, optimizer, batches: Iterable[tuple[paddle.Tensor, ...]], progress: _Progress) -> dict:
    model.train()
    for item in batches:
        if len(item) != 3:
            raise ConfigError("training data has no click labels (runner.train_data_dir)")
        dense, sparse, label = item
        prob = model(dense, sparse)
        loss = F.binary_cross_entropy(prob, label)
        regularization = model.regularization_loss()
        total = loss if regularization is None else loss + regularization
        total.backward()
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)
        progress.update(float(loss), label.numpy(), prob.numpy())
    return progress.close()


def _resume_point(config: Config, model, optimizer) -> int:
    """First epoch to train: after the last complete checkpoint when resuming, else 0 (or model_init_path)."""
    save_path = config.runner["model_save_path"]
    done = checkpoint.completed_epochs(save_path) if config.runner["resume"] else []
    if done:
        last_dir = os.path.join(save_path, str(done[-1]))
        checkpoint.load_model_state(model, last_dir)
        checkpoint.load_optimizer_state(optimizer, last_dir)
        log.info("resuming after epoch %d from %s", done[-1], last_dir)
        return done[-1] + 1
    if config.runner["model_init_path"]:
        checkpoint.load_model_state(model, config.runner["model_init_path"])
        log.info("initialised parameters from %s", config.runner["model_init_path"])
    return 0


def train(config: Config) -> dict:
    """Train `config`'s model; returns a summary with per-epoch stats and the last checkpoint directory."""
    device = select_device(config.runner["use_gpu"])
    seed_everything(config.runner["seed"])
    files = _data_files(config, "train_data_dir")
    model = build_model(config.model_name, config.hyper_parameters)
    optimizer = build_optimizer(model, config.hyper_parameters["optimizer"])
    first_epoch = _resume_point(config, model, optimizer)
    epochs = config.runner["epochs"]
    if first_epoch >= epochs:
        log.info("all %d epoch(s) already trained in %s; nothing to do (set runner.resume=false to retrain)",
                 epochs, config.runner["model_save_path"])
    writer = _visualdl_writer(config)
    info = {"model": config.model_name, "config": config.to_dict()}
    epoch_stats, last_dir, global_step = [], None, 0
    try:
        for epoch in range(first_epoch, epochs):
            progress = _Progress(config, epoch, writer, global_step)
            stats = train_one_epoch(model, optimizer, _train_batches(config, files, epoch), progress)
            global_step = progress.global_step
            last_dir = checkpoint.save_checkpoint(config.runner["model_save_path"], epoch, model, optimizer,
                                                  info={**info, "train": stats})
            log.info("epoch %d done: %d samples, loss %.5f, %.0f samples/s; checkpoint %s", epoch,
                     stats["samples"], stats["loss"], stats["samples_per_s"], last_dir)
            epoch_stats.append(stats)
    finally:
        if writer is not None:
            writer.close()
    samples = sum(s["samples"] for s in epoch_stats)
    seconds = sum(s["seconds"] for s in epoch_stats)
    return {"model": config.model_name, "device": device, "first_epoch": first_epoch, "epochs": epoch_stats,
            "samples": samples, "samples_per_s": samples / seconds if seconds else 0.0,
            "checkpoint": last_dir}


def predict(model, batches: Iterable[Batch]) -> tuple[np.ndarray | None, np.ndarray]:
    """Run `model` over `batches` without gradients; returns (labels or None, probabilities), both flat."""
    model.eval()
    labels, probs = [], []
    with paddle.no_grad():
        for batch in batches:
            probs.append(model(paddle.to_tensor(batch.dense), paddle.to_tensor(batch.sparse)).numpy().ravel())
            labels.append(None if batch.label is None else batch.label.ravel())
    has_labels = bool(labels) and all(lab is not None for lab in labels)
    flat_probs = np.concatenate(probs) if probs else np.zeros(0, np.float32)
    return (np.concatenate(labels) if has_labels else None), flat_probs


def _write_predictions(path: str, probs: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(f"{p:.7g}" for p in probs))
        f.write("\n" if probs.size else "")
    os.replace(tmp, path)


def evaluate(config: Config, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Score checkpoints of epochs [infer_start_epoch, infer_end_epoch) on runner.test_data_dir."""
    select_device(config.runner["use_gpu"])
    files = _data_files(config, "test_data_dir")
    load_path = config.runner["infer_load_path"] or config.runner["model_save_path"]
    model = build_model(config.model_name, config.hyper_parameters)
    results = []
    for epoch in range(config.runner["infer_start_epoch"], config.runner["infer_end_epoch"]):
        checkpoint.load_model_state(model, os.path.join(load_path, str(epoch)))
        start = time.perf_counter()
        batches = iter_batches(files, config.feature_spec(), config.runner["infer_batch_size"],
                               skip_bad=config.runner["skip_bad_lines"])
        labels, probs = predict(model, batches)
        seconds = time.perf_counter() - start
        result = {"epoch": epoch,
                  "auc": auc(labels, probs) if labels is not None else None,
                  "logloss": logloss(labels, probs) if labels is not None else None,
                  "samples": int(probs.size),
                  "samples_per_s": round(probs.size / seconds, 1) if seconds > 0 else None}
        if config.runner["infer_output"]:
            multi = config.runner["infer_end_epoch"] - config.runner["infer_start_epoch"] > 1
            out = config.runner["infer_output"] + (f".{epoch}" if multi else "")
            _write_predictions(out, probs)
            result["predictions"] = out
        if on_epoch is not None:
            on_epoch(result)
        results.append(result)
    return results


def format_result(result: dict) -> str:
    """One JSON line (floats rounded for people; NaN becomes null)."""
    def clean(v):
        if isinstance(v, float):
            return None if v != v else round(v, 6)
        return v
    return json.dumps({k: clean(v) for k, v in result.items()})
