"""``python -m reasoning_embed.hrsa model_a=tiny_base model_b=tiny_rlvr [texts=FILE] [level=token|pooled] [out=DIR]``.

Compares two models' layer-wise representations of the same texts at three levels (representation,
geometry, function) and writes ``DIR/hrsa.json`` plus PNG figures. ``model_a`` / ``model_b`` are
``conf/backbone`` options; a trained run's export is ``model_b.path=RUN/model model_b.tiny=null
model_b.name=NAME`` (read bidirectionally: its config.json says ``is_causal: false``). Options:
``conf/hrsa.yaml``. Heavy libraries are imported inside the run, not at import time.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from reasoning_embed.utils.hydra_utils import quiet_environment, user_errors_exit


@hydra.main(version_base="1.3", config_path="../conf", config_name="hrsa")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    quiet_environment()
    from omegaconf import open_dict

    from reasoning_embed.hrsa.pipeline import run_hrsa
    from reasoning_embed.utils.hydra_utils import results_dir

    with open_dict(cfg):
        cfg.paths.output_dir = results_dir(cfg)  # out= when given, even with hydra.run.dir set elsewhere
    report = run_hrsa(cfg)
    return report["cka"]["diagonal_biased"][-1]


if __name__ == "__main__":
    main()
