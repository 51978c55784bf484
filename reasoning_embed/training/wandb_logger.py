"""Lightning's W&B logger without the setting W&B warns about on every run."""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    """Lightning always passes ``anonymous=None`` to ``wandb.init``; W&B then prints "The anonymous setting has no
    effect and will be removed", which no user of this project can act on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
