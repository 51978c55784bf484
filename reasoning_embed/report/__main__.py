"""``python -m reasoning_embed.report sweep=DIR`` (or ``runs=[DIR,...]``): the study's table and figures.

Reads every run directory (``.hydra/config.yaml`` + ``metrics.json``; a run with ``failed.json`` or without
metrics is listed as failed) and writes ``<out>/table.md``, ``table.csv`` and ``report.json``: per backbone x
finetune mode the mean +- std over seeds of every score; for each reasoning/SFT backbone its per-seed deltas
of Mean(Task) against its base with a verdict (different / equivalent within +-margin / inconclusive /
underpowered; :mod:`reasoning_embed.report.stats`); the realignment curves of each pair and (``hrsa=true``)
the HRSA of the backbones themselves. The library lives in :mod:`reasoning_embed.report.build`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from reasoning_embed.report.build import make_report
from reasoning_embed.utils.hydra_utils import quiet_environment, user_errors_exit

__all__ = ["main", "make_report"]


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
@user_errors_exit
def main(cfg: DictConfig):
    quiet_environment()
    return make_report(cfg)


if __name__ == "__main__":
    main()
