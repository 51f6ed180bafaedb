"""Training progress: a progress bar, periodic log lines with loss and AUC, VisualDL scalars.

The bar shows a total and an ETA when the epoch's size is known (shard directories; text data from the second epoch
on, by the first epoch's count) and is replaced by the periodic log lines (every `runner.print_interval` steps,
with the ETA when known) when stderr is not a terminal or CTRKIT_NO_PROGRESS=1. VisualDL (`runner.use_visual`)
writes each run to its own directory `<runner.visual_log_path>/<model>-<train|eval>-<UTC time>`."""
from __future__ import annotations

import logging
import math
import os
import time
from datetime import datetime, timezone

import numpy as np

from ctrkit.cli import progress_enabled
from ctrkit.config import Config
from ctrkit.distributed import Context
from ctrkit.metrics import auc

log = logging.getLogger("ctrkit.training")


class Progress:
    """Progress bar (this worker's samples), periodic log lines with loss and AUC over the recent window of all
    workers, optional VisualDL (rank 0)."""

    def __init__(self, config: Config, epoch: int, writer, global_step: int, context: Context,
                 total: int | None = None):
        """`total`: this worker's samples in the epoch when known (None: unknown)."""
        from tqdm import tqdm

        self.print_interval = config.runner["print_interval"]
        self.context = context
        self.total = total or None
        label = f"epoch {epoch}" + (f" worker {context.rank}/{context.world}" if context.distributed else "")
        self.bar = tqdm(desc=label, total=self.total, unit=" samples", unit_scale=True, mininterval=1.0,
                        disable=not progress_enabled() or not context.is_main)
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

    def _check_finite(self, loss_sum: float) -> None:
        """Every worker sees the same summed loss, so all stop together when it is not finite."""
        if not math.isfinite(loss_sum):
            from ctrkit.training.loop import check_finite_loss

            check_finite_loss(loss_sum, self.epoch, self.steps)

    def _report(self) -> None:
        window = self.context.gather((np.concatenate(self.window_labels), np.concatenate(self.window_probs)))
        self.window_labels.clear()
        self.window_probs.clear()
        samples, loss_sum = self._totals()
        self._check_finite(loss_sum)
        window_auc = auc(np.concatenate([w[0] for w in window]), np.concatenate([w[1] for w in window]))
        avg_loss = loss_sum / max(samples, 1)
        seconds = time.perf_counter() - self.start
        rate = samples / seconds
        if not self.context.is_main:
            return
        self.bar.set_postfix(loss=f"{avg_loss:.4f}", auc=f"{window_auc:.4f}")
        eta = ""
        if self.total and self.samples:
            left = max(self.total - self.samples, 0) * seconds / self.samples
            eta = f", {100 * min(self.samples / self.total, 1):.0f}% of {self.total} samples, eta {_duration(left)}"
        if not self.bar.disable:
            self.bar.clear()  # the log line on a line of its own, then the bar again below it
        log.info("epoch %d step %d: loss %.5f, auc(last %d steps) %.5f, %.0f samples/s%s", self.epoch, self.steps,
                 avg_loss, self.print_interval, window_auc, rate, eta)
        if not self.bar.disable:
            self.bar.refresh()
        if self.writer is not None:
            self.writer.add_scalar(tag="train/loss", step=self.global_step, value=avg_loss)
            self.writer.add_scalar(tag="train/auc", step=self.global_step, value=window_auc)
            self.writer.add_scalar(tag="train/samples_per_s", step=self.global_step, value=rate)

    def close(self) -> dict:
        self.bar.close()
        samples, loss_sum = self._totals()
        self._check_finite(loss_sum)
        seconds = time.perf_counter() - self.start
        return {"epoch": self.epoch, "steps": self.steps, "samples": int(samples),
                "loss": loss_sum / max(samples, 1), "seconds": seconds,
                "samples_per_s": samples / seconds if seconds > 0 else 0.0}

def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def visualdl_writer(config: Config, context: Context, kind: str = "train"):
    """A VisualDL LogWriter on this run's own directory (rank 0 with runner.use_visual), else None."""
    if not config.runner["use_visual"] or not context.is_main:
        return None
    try:
        from visualdl import LogWriter
    except ImportError:
        from ctrkit.config import ConfigError

        raise ConfigError("runner.use_visual=true needs VisualDL, which is not installed "
                          "(pip install -r requirements/train.txt, or set runner.use_visual=false)") from None

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root = config.runner["visual_log_path"]
    logdir = os.path.join(root, f"{config.model_name}-{kind}-{stamp}")
    suffix = 1
    while os.path.exists(logdir):  # two runs in the same second
        suffix += 1
        logdir = os.path.join(root, f"{config.model_name}-{kind}-{stamp}-{suffix}")
    log.info("VisualDL: writing %s scalars to %s (view: visualdl --logdir %s)", kind, logdir, root)
    return LogWriter(logdir=logdir)

