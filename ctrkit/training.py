"""Training and evaluation loops behind `tools/trainer.py` and `tools/infer.py`.

`train(config)` trains the configured model epoch by epoch, writing an atomic checkpoint after each epoch and
resuming from the last complete one (parameters, optimizer state, epoch) when `runner.resume` is true.
`evaluate(config)` scores the checkpoints of epochs [infer_start_epoch, infer_end_epoch) on the test data with
exact AUC and logloss.

Data: `runner.train_data_dir` / `runner.test_data_dir` is text (files or a directory, parsed on the fly, with
`runner.num_workers` DataLoader processes parsing ahead) or a shard directory written by
`tools/prepare_criteo.py` (recognised by its manifest; read in this process, since it costs a copy, not a parse).

CPU speed (measurements in docs/scale.md):
- MKL, Paddle's CPU BLAS, runs generic kernels on AMD processors unless told otherwise (about half speed);
  importing ctrkit sets MKL_DEBUG_CPU_TYPE on AMD CPUs (ctrkit/__init__.py).
- `runner.cpu_threads` math threads (0: this machine's cores shared among its workers).
- Every sparse embedding looks up each distinct id of a batch once (`UniqueIdLookups`, `runner.unique_id_lookups`),
  so its gradient has sorted unique rows and Paddle's sparse Adam skips its slow merge of duplicate rows.

Distributed (`runner.use_fleet` under `paddle.distributed.launch`, see ctrkit/distributed.py): the model is wrapped
in DataParallel. Workers read disjoint data: with text, alternate blocks of the files (the data layer's
shard_index/shard_count); with shards, each worker's slice of every global batch of workers x train_batch_size
rows, so the job computes what one process computes with that batch size. Each step the workers add up their
row counts; a worker whose data ran out takes part with a zero-weight padding row until all are done, and the
loss is scaled so that the averaged gradient is that of the mean loss over every row of the step. Loss and AUC
are aggregated over all workers, rank 0 writes checkpoints, evaluation gathers every prediction for one AUC.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import paddle
import paddle.nn.functional as F

from ctrkit import checkpoint
from ctrkit.config import Config, ConfigError
from ctrkit.data import Batch, iter_batches, list_data_files
from ctrkit.data.paddle_dataset import BatchDataset
from ctrkit.data.spec import NUM_DENSE, NUM_SLOTS
from ctrkit.distributed import Context, rank_slice, setup
from ctrkit.metrics import auc, logloss
from ctrkit.shards import ShardSet, is_shard_dir, iter_shard_batches, open_shards
from models.registry import build_model

log = logging.getLogger("ctrkit.training")


class DeviceError(RuntimeError):
    """The configured device is not available in this build or on this machine."""


def select_device(use_gpu: bool, device_id: int = 0) -> str:
    """Set Paddle's device; a GPU request this build or machine cannot serve is an error, never a CPU fallback."""
    if not use_gpu:
        paddle.set_device("cpu")
        return "cpu"
    if not paddle.is_compiled_with_cuda():
        raise DeviceError("runner.use_gpu is true but this paddlepaddle build has no CUDA support "
                          f"(paddle {paddle.__version__}); install a GPU build or set runner.use_gpu=false")
    if paddle.device.cuda.device_count() <= device_id:
        raise DeviceError(f"runner.use_gpu is true but CUDA device {device_id} is not visible "
                          f"({paddle.device.cuda.device_count()} device(s))")
    paddle.set_device(f"gpu:{device_id}")
    return f"gpu:{device_id}"


def start_run(config: Config) -> tuple[Context, str]:
    """Job context, device and CPU math threads for a run."""
    context = setup(config.runner["use_fleet"])
    local_rank = int(os.environ.get("PADDLE_LOCAL_RANK", "0")) if context.distributed else 0
    device = select_device(config.runner["use_gpu"], local_rank)
    threads = config.runner["cpu_threads"] or max(1, (os.cpu_count() or 1) // context.local_world)
    paddle.base.core.set_num_threads(threads)
    return context, device


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


# ------------------------------------------------------------------------------------------------------ data

@dataclass
class _Source:
    """Where a split's rows come from: text files or a shard directory."""

    files: list[str] | None = None
    shards: ShardSet | None = None


def _open_source(config: Config, key: str) -> _Source:
    path = config.runner[key]
    if not path:
        raise ConfigError(f"runner.{key} is not set")
    try:
        if is_shard_dir(path):
            shards = open_shards(path)
            shards.check_spec(config.feature_spec(), f"config {config.path}")
            return _Source(shards=shards)
        return _Source(files=list_data_files(path))
    except (FileNotFoundError, ValueError) as exc:  # ShardError is a ValueError
        raise ConfigError(f"runner.{key}: {exc}") from None


def _rank_batches(batches: Iterable[Batch], context: Context) -> Iterator[Batch]:
    """This worker's slice of every global batch (the batches themselves in a single process)."""
    if not context.distributed:
        yield from batches
        return
    for batch in batches:
        part = rank_slice(len(batch.dense), context)
        yield Batch(batch.dense[part], batch.sparse[part], None if batch.label is None else batch.label[part])


def _to_tensors(batches: Iterable[Batch]) -> Iterator[tuple[paddle.Tensor, ...]]:
    for batch in batches:
        yield tuple(paddle.to_tensor(a) for a in batch if a is not None)


def _train_batches(config: Config, source: _Source, epoch: int,
                   context: Context) -> Iterable[tuple[paddle.Tensor, ...]]:
    """This worker's shuffled (dense, sparse, label) tensors of epoch `epoch`. The shuffle depends only on (seed,
    epoch), so a resumed run sees the same data order as an uninterrupted one."""
    seed, batch_size = config.runner["seed"] * 1000 + epoch, config.runner["train_batch_size"]
    shuffle_buffer = config.runner["shuffle_buffer"]
    if source.shards is not None:
        batches = iter_shard_batches(source.shards, batch_size * context.world, shuffle_buffer=shuffle_buffer,
                                     seed=seed)
        return _to_tensors(_rank_batches(batches, context))
    options = dict(shuffle_buffer=shuffle_buffer, seed=seed, skip_bad=config.runner["skip_bad_lines"],
                   shard_index=context.rank, shard_count=context.world)
    spec = config.feature_spec()
    if config.runner["num_workers"] == 0:
        return _to_tensors(iter_batches(source.files, spec, batch_size, **options))
    dataset = BatchDataset(source.files, spec, batch_size, **options)
    return paddle.io.DataLoader(dataset, batch_size=None, num_workers=config.runner["num_workers"])


def _eval_batches(config: Config, source: _Source, context: Context) -> Iterator[Batch]:
    """This worker's slice of every global batch of the test data, in file order (so that rank order within a
    global batch is row order)."""
    batch_size = config.runner["infer_batch_size"] * context.world
    if source.shards is not None:
        batches = iter_shard_batches(source.shards, batch_size)
    else:
        batches = iter_batches(source.files, config.feature_spec(), batch_size,
                               skip_bad=config.runner["skip_bad_lines"])
    return _rank_batches(batches, context)


# -------------------------------------------------------------------------------------------- sparse lookups

class UniqueIdLookups:
    """Forward hooks on the sparse embeddings of a model: each embedding looks up the distinct ids of its input
    (sorted) and gathers its output rows from them. The embedding gradient then has unique sorted rows, which
    Paddle's sparse Adam updates directly; with duplicates (a batch of 4096 rows has 106,496 ids, many repeated)
    it first merges them, slowly (Criteo-like ids: 80 of a 227 ms step; 14 ms with these hooks, which cost 13).
    The same update, bit for bit (the gather's backward sums the duplicate rows' gradients instead)."""

    def __init__(self, model: paddle.nn.Layer):
        self._last: tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor] | None = None
        self.handles = []
        for layer in model.sublayers(include_self=True):
            if isinstance(layer, paddle.nn.Embedding) and layer._sparse:
                self.handles.append(layer.register_forward_pre_hook(self._lookup_unique))
                self.handles.append(layer.register_forward_post_hook(self._gather_rows))

    def _lookup_unique(self, layer, inputs):
        ids = inputs[0]
        if self._last is None or self._last[0] is not ids:  # tables fed the same ids share one np.unique
            unique, inverse = np.unique(ids.numpy(), return_inverse=True)
            self._last = (ids, paddle.to_tensor(unique), paddle.to_tensor(inverse.reshape(-1)))
        return (self._last[1],)

    def _gather_rows(self, layer, inputs, output):
        ids, _, inverse = self._last
        return paddle.reshape(paddle.gather(output, inverse), [*ids.shape, output.shape[-1]])

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self._last = None


# ---------------------------------------------------------------------------------------------------- training

class _Progress:
    """Progress bar (this worker's samples), periodic log lines with loss and AUC over the recent window of all
    workers, optional VisualDL (rank 0)."""

    def __init__(self, config: Config, epoch: int, writer, global_step: int, context: Context):
        from tqdm import tqdm

        self.print_interval = config.runner["print_interval"]
        self.context = context
        label = f"epoch {epoch}" + (f" worker {context.rank}/{context.world}" if context.distributed else "")
        self.bar = tqdm(desc=label, unit=" samples", unit_scale=True, mininterval=1.0,
                        disable=os.environ.get("CTRKIT_NO_PROGRESS") == "1" or not context.is_main)
        self.epoch, self.writer, self.global_step = epoch, writer, global_step
        self.start = time.perf_counter()
        self.samples = self.steps = 0
        self.loss_sum = 0.0
        self.window_labels: list[np.ndarray] = []
        self.window_probs: list[np.ndarray] = []

    def update(self, loss_sum: float, labels: np.ndarray, probs: np.ndarray) -> None:
        """One step on every worker (this one's rows may be none); `loss_sum` sums the rows' losses."""
        self.steps += 1
        self.global_step += 1
        self.samples += labels.shape[0]
        self.loss_sum += loss_sum
        self.window_labels.append(labels)
        self.window_probs.append(probs)
        self.bar.update(labels.shape[0])
        if self.steps % self.print_interval == 0:
            self._report()

    def _totals(self) -> tuple[float, float]:
        """(samples, summed loss) of all workers so far."""
        samples, loss_sum = self.context.sum([self.samples, self.loss_sum])
        return samples, loss_sum

    def _report(self) -> None:
        window = self.context.gather((np.concatenate(self.window_labels), np.concatenate(self.window_probs)))
        window_auc = auc(np.concatenate([w[0] for w in window]), np.concatenate([w[1] for w in window]))
        self.window_labels.clear()
        self.window_probs.clear()
        samples, loss_sum = self._totals()
        avg_loss = loss_sum / max(samples, 1)
        rate = samples / (time.perf_counter() - self.start)
        if not self.context.is_main:
            return
        self.bar.set_postfix(loss=f"{avg_loss:.4f}", auc=f"{window_auc:.4f}")
        log.info("epoch %d step %d: loss %.5f, auc(last %d steps) %.5f, %.0f samples/s", self.epoch, self.steps,
                 avg_loss, self.print_interval, window_auc, rate)
        if self.writer is not None:
            self.writer.add_scalar(tag="train/loss", step=self.global_step, value=avg_loss)
            self.writer.add_scalar(tag="train/auc", step=self.global_step, value=window_auc)
            self.writer.add_scalar(tag="train/samples_per_s", step=self.global_step, value=rate)

    def close(self) -> dict:
        self.bar.close()
        samples, loss_sum = self._totals()
        seconds = time.perf_counter() - self.start
        return {"epoch": self.epoch, "steps": self.steps, "samples": int(samples),
                "loss": loss_sum / max(samples, 1), "seconds": seconds,
                "samples_per_s": samples / seconds if seconds > 0 else 0.0}


def _padding_batch() -> tuple[paddle.Tensor, ...]:
    """One all-missing row: a worker whose data ran out steps with it (at weight 0) while others still have data,
    since DataParallel needs every worker in every step, with a gradient for every sparse table."""
    return (paddle.zeros([1, NUM_DENSE], dtype="float32"), paddle.zeros([1, NUM_SLOTS], dtype="int64"),
            paddle.zeros([1, 1], dtype="float32"))


def train_one_epoch(model, optimizer, batches: Iterable[tuple[paddle.Tensor, ...]], progress: _Progress,
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
        dense, sparse, label = item if rows else _padding_batch()
        prob = network(dense, sparse)
        loss_sum = F.binary_cross_entropy(prob, label, reduction="sum")
        # DataParallel averages gradients over workers: this weight makes the result the mean over all rows
        total_loss = loss_sum * (context.world / total if rows else 0.0)
        regularization = model.regularization_loss()
        if regularization is not None:
            total_loss = total_loss + regularization
        total_loss.backward()
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)
        if rows:
            progress.update(float(loss_sum), label.numpy(), prob.numpy())
        else:
            progress.update(0.0, np.zeros((0, 1), np.float32), np.zeros((0, 1), np.float32))
        if on_step is not None:
            on_step({"epoch": progress.epoch, "step": progress.steps, "rank": context.rank, "model": model,
                     "batch": (dense, sparse, label) if rows else None})
    return progress.close()


def _resume_point(config: Config, model, optimizer, context: Context) -> int:
    """First epoch to train: after the last complete checkpoint when resuming, else 0 (or model_init_path)."""
    save_path = config.runner["model_save_path"]
    done = checkpoint.completed_epochs(save_path) if config.runner["resume"] else []
    context.agree(done, f"the complete checkpoints in runner.model_save_path={save_path} (every worker must see "
                        f"the same directory, e.g. on shared storage)")
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


def _visualdl_writer(config: Config, context: Context):
    if not config.runner["use_visual"] or not context.is_main:
        return None
    from visualdl import LogWriter

    return LogWriter(logdir=config.runner["visual_log_path"])


def train(config: Config, on_step: Callable[[dict], None] | None = None) -> dict:
    """Train `config`'s model; returns a summary with per-epoch stats and the last checkpoint directory.
    `on_step(info)` runs after every optimizer step with info = {"epoch", "step" (1-based), "rank", "model",
    "batch": this worker's (dense, sparse, label) tensors, None for a padding step}."""
    context, device = start_run(config)
    seed_everything(config.runner["seed"])
    source = _open_source(config, "train_data_dir")
    if source.shards is not None and not source.shards.labeled:
        raise ConfigError(f"runner.train_data_dir: {source.shards.directory} has no click labels")
    model = build_model(config.model_name, config.hyper_parameters)
    optimizer = build_optimizer(model, config.hyper_parameters["optimizer"])
    first_epoch = _resume_point(config, model, optimizer, context)
    epochs = config.runner["epochs"]
    if first_epoch >= epochs:
        log.info("all %d epoch(s) already trained in %s; nothing to do (set runner.resume=false to retrain)",
                 epochs, config.runner["model_save_path"])
    network = context.wrap(model)
    lookups = UniqueIdLookups(model) if device == "cpu" and config.runner["unique_id_lookups"] else None
    writer = _visualdl_writer(config, context)
    info = {"model": config.model_name, "config": config.to_dict(), "workers": context.world}
    epoch_stats, last_dir, global_step = [], None, 0
    try:
        for epoch in range(first_epoch, epochs):
            progress = _Progress(config, epoch, writer, global_step, context)
            stats = train_one_epoch(model, optimizer, _train_batches(config, source, epoch, context), progress,
                                    context, network, on_step)
            global_step = progress.global_step
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


# -------------------------------------------------------------------------------------------------- evaluation

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


def _write_predictions(path: str, probs: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(f"{p:.7g}" for p in probs))
        f.write("\n" if probs.size else "")
    os.replace(tmp, path)


def evaluate(config: Config, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Score checkpoints of epochs [infer_start_epoch, infer_end_epoch) on runner.test_data_dir (data-parallel
    with runner.use_fleet: every worker scores its slice and all predictions are gathered for one AUC)."""
    context, _ = start_run(config)
    source = _open_source(config, "test_data_dir")
    load_path = config.runner["infer_load_path"] or config.runner["model_save_path"]
    model = build_model(config.model_name, config.hyper_parameters)
    results = []
    for epoch in range(config.runner["infer_start_epoch"], config.runner["infer_end_epoch"]):
        checkpoint.load_model_state(model, os.path.join(load_path, str(epoch)))
        start = time.perf_counter()
        label_parts, prob_parts = _predict_batches(model, _eval_batches(config, source, context))
        labeled = context.gather(label_parts is not None)
        probs = _gather_in_order(prob_parts, context)
        labels = _gather_in_order(label_parts, context) if all(labeled) else None
        seconds = time.perf_counter() - start
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
                _write_predictions(out, probs)
            result["predictions"] = out
        if on_epoch is not None:
            on_epoch(result)
        results.append(result)
    context.barrier()
    return results


def format_result(result: dict) -> str:
    """One JSON line (floats rounded for people; NaN becomes null)."""
    def clean(v):
        if isinstance(v, float):
            return None if v != v else round(v, 6)
        return v
    return json.dumps({k: clean(v) for k, v in result.items()})
