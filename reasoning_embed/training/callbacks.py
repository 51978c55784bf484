"""Small Lightning callbacks of the training entry point."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


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


class GracefulInterrupt(L.Callback):
    """SIGINT (Ctrl-C) or SIGTERM (what SLURM sends before pre-emption) during ``fit``: finish the current step,
    save a resumable checkpoint to ``ckpt_path`` and stop. A second signal aborts at once.

    ``signum`` tells the entry point afterwards that the run was interrupted (and by what), not that it failed.
    Under DDP, Lightning's own SIGTERM handler (kept: this one chains to it) stops every rank at the same
    step by raising its SIGTERMException; the entry point then saves with ``save_after_fit``.
    """

    def __init__(self, ckpt_path: str):
        self.ckpt_path = ckpt_path
        self.signum: int | None = None
        self.saved_step: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        import signal
        import sys

        previous = self._previous.get(signum)
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step and saving a resumable "
              f"checkpoint (send it again to abort at once)", file=sys.stderr, flush=True)
        if callable(previous) and signum != signal.SIGINT:
            previous(signum, frame)  # Lightning's SIGTERM notifier: the ranks stop together

    def on_fit_start(self, trainer, pl_module):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handler)

    def _restore(self):
        import signal

        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}

    def _save(self, trainer):
        if self.saved_step is None:
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)
            self.saved_step = int(trainer.global_step)
            self._last_global_step_saved = self.saved_step  # the entry point does not save this step again

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.signum is not None:
            self._save(trainer)
            trainer.should_stop = True

    def on_exception(self, trainer, pl_module, exception):
        self._restore()  # Lightning's SIGTERMException (raised between steps): the entry point saves after fit

    def save_after_fit(self, trainer) -> None:
        """The signal stopped fit by Lightning's SIGTERMException, between steps: save that consistent state."""
        self._save(trainer)

    def on_fit_end(self, trainer, pl_module):
        self._restore()


class StepProgressBar(TQDMProgressBar):
    """The training bar counts the steps that will run (``max_steps`` when it ends the epoch early), not the
    epoch's batches; the one-batch validation trigger gets no bar of its own."""

    @property
    def total_train_batches(self):
        total = super().total_train_batches
        max_steps = self.trainer.max_steps
        if max_steps is not None and max_steps > 0 and total != float("inf"):
            done_before_epoch = self.trainer.current_epoch * total
            total = max(0, min(total, max_steps - done_before_epoch))
        return total

    @property
    def total_val_batches(self):
        return 0

    def init_validation_tqdm(self):
        from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

        return Tqdm(disable=True)  # created disabled: a bar disabled after creation has already printed
