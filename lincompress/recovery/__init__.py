"""Recovery: data-free selective transfer + post-training of the hybrid against the original model.

sampling.py      flow-matching conventions, scheduler sigma grids, model calls, Euler sampler
teacher_data.py  the original model's own trajectories, cached as safetensors shards (resumable)
objectives.py    ADM (default), MSE, FM: one interface, one class each
distill.py       few-step distillation objectives: DMD2 (fake-score network), few-step ADM
selective.py     the selection regulariser (constraint, binarisation, progressive freezing) and greedy
trainer.py       the training loop (AdamW groups, bf16, checkpointing, NaN guard, SIGINT/SIGTERM/SIGHUP)
checkpoint.py    named-state checkpoints on torch.distributed.checkpoint, verified + atomic, for exact resume
data_parallel.py the trainer's wiring for several processes (FSDP2 copies, micro-batch streams, replicated scores)
progress.py      progress bar and JSONL metrics;  report.py  report.md + plots

The passes (``lincompress.passes.SelectiveTransfer`` / ``Recover`` / ``Report``) wrap these.
"""

from lincompress.recovery.objectives import OBJECTIVES, Objective, make_objective
from lincompress.recovery.selective import SelectiveConfig, SelectiveRegularizer, greedy_selection
from lincompress.recovery.trainer import NonFiniteError, RecoveryConfig, Trainer, TrainingInterrupted

__all__ = [
    "OBJECTIVES", "NonFiniteError", "Objective", "RecoveryConfig", "SelectiveConfig", "SelectiveRegularizer",
    "Trainer", "TrainingInterrupted", "greedy_selection", "make_objective",
]
