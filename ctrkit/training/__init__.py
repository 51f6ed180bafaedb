"""Training and evaluation behind `tools/trainer.py` and `tools/infer.py`, one module per concern:

| module | what |
| --- | --- |
| `device` | device (never a silent CPU fallback), CPU threads, job context, seeds (`start_run`, `DeviceError`) |
| `optim` | the optimizer of `hyper_parameters.optimizer` (`build_optimizer`) |
| `model` | building the configured model (`build_configured_model`) |
| `sources` | text files or shard directories -> (distributed-aware) batches (`open_source`, `train_batches`) |
| `lookups` | unique-id embedding lookups (`UniqueIdLookups`) |
| `progress` | progress bar, log lines, VisualDL (`Progress`, `visualdl_writer`) |
| `loop` | one epoch, resume, checkpoints (`train_one_epoch`, `train`) |
| `evaluation` | scoring checkpoints, predictions (`evaluate`, `predict`) |
| `report` | the JSON lines the CLIs print (`format_result`) |

`train(config)` trains the configured model epoch by epoch, writing an atomic checkpoint after each epoch and
resuming from the last complete one (parameters, optimizer state, epoch) when `runner.resume` is true.
`evaluate(config)` scores the checkpoints of epochs [infer_start_epoch, infer_end_epoch) on the test data with
exact AUC and logloss.

Data: `runner.train_data_dir` / `runner.test_data_dir` is text (files or a directory, parsed on the fly, with
`runner.num_workers` DataLoader processes parsing ahead) or a shard directory written by
`tools/prepare_criteo.py` (recognised by its manifest; read in this process, since it costs a copy, not a parse).

CPU speed (measurements in docs/scale.md):
- MKL, Paddle's CPU BLAS, runs generic kernels on AMD processors unless told otherwise (about half speed);
  the entry points call `ctrkit.cpu_env.configure_cpu_env()`, which sets MKL_DEBUG_CPU_TYPE on AMD CPUs.
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
from ctrkit.training.device import DeviceError, seed_everything, select_device, start_run
from ctrkit.training.evaluation import evaluate, predict
from ctrkit.training.lookups import UniqueIdLookups
from ctrkit.training.loop import TrainingError, train, train_one_epoch
from ctrkit.training.model import build_configured_model
from ctrkit.training.optim import build_optimizer
from ctrkit.training.report import format_result

__all__ = ["DeviceError", "TrainingError", "UniqueIdLookups", "build_configured_model", "build_optimizer", "evaluate",
           "format_result", "predict", "seed_everything", "select_device", "start_run", "train", "train_one_epoch"]
