"""Margin filter: ``python -m reasoning_embed.filter input=... output=... reference=... [min_margin=..]``.

margin = cos(q, pos) - max cos(q, neg). Rows with a LARGER margin are easier; ``min_margin`` drops
hard/likely-false-negative rows (keeps margin >= min_margin); ``max_margin`` drops easy rows (keeps
margin <= max_margin); ``max_rows`` caps the rest (``cap=random`` by default). ``--help`` says the same;
details in ``reasoning_embed/mining/margin_filter.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from reasoning_embed.mining.reference import set_threads
from reasoning_embed.utils.hydra_utils import quiet_environment, user_errors_exit

log = logging.getLogger("reasoning_embed.filter")


def run(cfg: DictConfig) -> dict:
    from reasoning_embed.mining.margin_filter import filter_file
    from reasoning_embed.mining.reference import load_reference

    def reference():  # loaded after the input was read and checked
        from reasoning_embed.assets import materialize_backbone

        return load_reference(cfg.reference, cfg.reference_kind, cfg.device, cfg.max_length, cfg.dtype,
                              build=materialize_backbone)  # a backbone config name (tiny_base) is built first

    output = Path(cfg.output)
    if output.suffix != ".jsonl":
        output = output / Path(cfg.input).name
    r = filter_file(cfg.input, output, reference, cfg.min_margin, cfg.max_margin, cfg.max_rows, cfg.cap,
                    cfg.no_negative, cfg.use_instruction, cfg.seed, cfg.batch_size, cfg.record_margin,
                    cfg.bad_rows, cfg.keep_work_dir, cfg.progress)
    msg = (f"{output}: rows {r['rows_in']} -> {r['rows_out']} (below min_margin {r['dropped_below_min_margin']}, "
           f"above max_margin {r['dropped_above_max_margin']}, no negative {r['dropped_no_negative']}, "
           f"cap {r['dropped_by_cap']}; report: {output}.report.json)")
    log.info(msg)
    print(msg)
    return r


@hydra.main(version_base="1.3", config_path="conf", config_name="filter")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    quiet_environment()
    set_threads(cfg.get("threads"))
    run(cfg)


if __name__ == "__main__":
    main()
