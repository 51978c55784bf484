"""Mine hard negatives: ``python -m reasoning_embed.mine input=... output=... reference=...``.

Queries are embedded without their instruction; candidates are the input's positives (or ``corpus=``);
a candidate is kept only if ``cos(q,c) <= (1 - mining.relative_margin) * max_p cos(q,p)``. Options and
their meaning: ``conf/mine.yaml``; the algorithm: ``reasoning_embed/mining/mine.py``.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from reasoning_embed.mining.reference import set_threads
from reasoning_embed.utils.hydra_utils import quiet_environment, user_errors_exit

log = logging.getLogger("reasoning_embed.mine")


def settings_from_cfg(mining) -> "MineSettings":  # noqa: F821
    from reasoning_embed.mining.mine import MineSettings

    d = OmegaConf.to_container(mining, resolve=True) if not isinstance(mining, dict) else dict(mining)
    rr = d.get("rank_range") or [0, None]
    d["rank_range"] = (int(rr[0] or 0), None if len(rr) < 2 or rr[1] is None else int(rr[1]))
    from dataclasses import fields

    known = {f.name for f in fields(MineSettings)}
    unknown = sorted(set(d) - known)
    if unknown:
        from reasoning_embed.errors import ReasoningEmbedError

        raise ReasoningEmbedError(f"unknown mining option(s) {unknown}; known: {sorted(known)}")
    return MineSettings(**d)


def run(cfg: DictConfig) -> list[dict]:
    from reasoning_embed.mining.mine import mine
    from reasoning_embed.mining.reference import load_reference

    settings = settings_from_cfg(cfg.mining)
    settings.check()
    def reference():  # loaded after the input was read and checked
        from reasoning_embed.assets import materialize_backbone

        return load_reference(cfg.reference, cfg.reference_kind, cfg.device, cfg.max_length, cfg.dtype,
                              build=materialize_backbone)  # a backbone config name (tiny_base) is built first

    reports = mine(cfg.input, cfg.output, reference, settings, cfg.get("corpus"), progress=cfg.progress)
    for r in reports:
        msg = (f"{r['output']}: rows {r['rows_in']} -> {r['rows_out']}, mined {r['mined_negatives']} negatives, "
               f"{r['rows_short']} rows short of {settings.num_negatives}, {r['margin_rejected']} margin rejections "
               f"(report: {r['output']}.report.json)")
        log.info(msg)
        print(msg)
    return reports


@hydra.main(version_base="1.3", config_path="conf", config_name="mine")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    quiet_environment()
    set_threads(cfg.get("threads"))
    try:
        run(cfg)
    except KeyboardInterrupt:  # the encoded batches are on disk: the same command resumes from them
        print("\ninterrupted; the batches encoded so far are kept: run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
