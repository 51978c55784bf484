"""The one atomic writer: a result is the old file or the complete new one, never half-written."""

import os

import pytest

from reasoning_embed.utils.io import atomic_open, atomic_path, atomic_write_json, atomic_write_text, save_figure


def test_streaming_write_replaces_only_on_success(tmp_path):
    out = tmp_path / "sub" / "rows.jsonl"
    atomic_write_text(out, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(out) as f:
            f.write("half of the new\n")
            f.flush()
            raise RuntimeError("interrupted")
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["rows.jsonl"]  # no temporary left behind
    with atomic_open(out) as f:
        f.write("new\n")
        assert out.read_text() == "old\n"  # readers see the old file until the end
    assert out.read_text() == "new\n"


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_atomic_path_keeps_the_suffix_for_libraries(tmp_path):
    import numpy as np

    with atomic_path(tmp_path / "m.npy") as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
        np.save(tmp, np.arange(3))  # np.save would append .npy to any other name
    assert np.load(tmp_path / "m.npy").tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["m.npy"]


def test_save_figure_writes_a_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    save_figure(fig, tmp_path / "f.png")
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_directory_replaced_whole_or_not_at_all(tmp_path):
    from reasoning_embed.utils.io import atomic_dir

    out = tmp_path / "model"
    out.mkdir()
    (out / "old.bin").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.bin").write_text("half")
            raise RuntimeError("interrupted")
    assert [p.name for p in out.iterdir()] == ["old.bin"] and [p.name for p in tmp_path.iterdir()] == ["model"]
    old = os.umask(0o022)
    try:
        with atomic_dir(out) as tmp:
            (tmp / "new.bin").write_text("new")
    finally:
        os.umask(old)
    assert [p.name for p in out.iterdir()] == ["new.bin"] and [p.name for p in tmp_path.iterdir()] == ["model"]
    assert out.stat().st_mode & 0o777 == 0o755
