"""Training progress: a progress bar, periodic log lines with loss and AUC, VisualDL scalars."""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from ctrkit.config import Config
from ctrkit.distributed import Context
from ctrkit.metrics import auc

log = logging.getLogger("ctrkit.training")


class Progress:
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



def visualdl_writer(config: Config, context: Context):
    if not config.runner["use_visual"] or not context.is_main:
        return None
    from visualdl import LogWriter

    return LogWriter(logdir=config.runner["visual_log_path"])

