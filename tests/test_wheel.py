"""A non-editable install carries the Hydra configs: the built wheel holds every config file of
``reasoning_embed/conf`` (symlinked groups such as ``model_a`` included) and the entry points compose their
configs from the installed package, away from the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import reasoning_embed

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "--disable-pip-version-check", "-w", str(out)], check=True, cwd=out, timeout=300)
    (whl,) = out.glob("reasoning_embed-*.whl")
    return whl


def test_the_wheel_carries_every_config(wheel):
    conf = reasoning_embed.CONF_DIR
    # followlinks: model_a/ and model_b/ are links to backbone/ in the checkout, copies in the wheel
    expected = {f"reasoning_embed/conf/{p.relative_to(conf).as_posix()}"
                for p in conf.rglob("*.yaml")} | {
        f"reasoning_embed/conf/{Path(d, f).relative_to(conf).as_posix()}"
        for d, _, files in os.walk(conf, followlinks=True) for f in files if f.endswith(".yaml")}
    names = set(zipfile.ZipFile(wheel).namelist())
    assert expected - names == set()
    groups = {Path(n).parts[2] for n in names if n.startswith("reasoning_embed/conf/") and n.count("/") > 2}
    assert {"backbone", "model_a", "model_b", "hydra", "data", "trainer", "benchmark", "experiment"} <= groups
    assert "reasoning_embed/conf/hydra/launcher/slurm.yaml" in names  # a nested group


def test_entry_points_compose_from_the_installed_package(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run([sys.executable, "-c", "import reasoning_embed; print(reasoning_embed.CONF_DIR)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(site / "reasoning_embed" / "conf")  # the unpacked wheel, not the checkout
    for module, expect in [("reasoning_embed.train", "backbone:"),
                           ("reasoning_embed.hrsa", "model_a:"),
                           ("reasoning_embed.evaluate", "benchmark:")]:
        r = subprocess.run([sys.executable, "-m", module, "--cfg", "job"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (module, r.stderr[-2000:])
        assert expect in r.stdout, (module, r.stdout[:500])
    assert not (elsewhere / "outputs").exists()  # composing writes nothing
