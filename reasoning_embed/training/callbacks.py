"""Small Lightning callbacks of the training entry point."""

from __future__ import annotations

import lightning as L


class StopAtStep(L.Callback):
    """Stop training after ``step`` optimizer steps, saving a checkpoint first — a simulated preemption
    (``+extra_callbacks.stop._target_=reasoning_embed.training.callbacks.StopAtStep +extra_callbacks.stop.step=N``).
    """

    def __init__(self, step: int, ckpt_path: str | None = None):
        self.step, self.ckpt_path = step, ckpt_path
        self._last_global_step_saved = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            if self.ckpt_path:
                trainer.save_checkpoint(self.ckpt_path, weights_only=False)
                self._last_global_step_saved = trainer.global_step
            trainer.should_stop = True
