"""Convert retrieval data to the training format:
``python -m reasoning_embed.convert format=st|beir|tevatron input=... output=... instruction="..."``.

Layouts, instruction assignment per source and errors: ``reasoning_embed/mining/convert.py``;
options: ``conf/convert.yaml``.
"""

from __future__ import annotations

import json
import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from reasoning_embed.utils.hydra_utils import user_errors_exit

log = logging.getLogger("reasoning_embed.convert")


def run(cfg: DictConfig) -> dict:
    from reasoning_embed.mining.convert import convert

    def plain(value):
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    report = convert(cfg.format, plain(cfg.input), cfg.output, cfg.instruction, plain(cfg.get("instruction_map")),
                     **(plain(cfg.get("options")) or {}))
    for src, r in report["sources"].items():
        msg = f"{src} -> {r['output']}: {r['rows']} rows"
        log.info(msg)
        print(msg)
    log.debug(json.dumps(report))
    return report


@hydra.main(version_base="1.3", config_path="conf", config_name="convert")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
