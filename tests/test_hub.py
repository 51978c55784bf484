"""The one hub-cache probe reads the cache the environment names at call time (models and datasets)."""

from reasoning_embed.utils.hub import cached_snapshot, datasets_cache_dir, hub_cache_dir, offline_reason


def _fake_snapshot(home, repo="org/name", rev="0123abcd"):
    repo_dir = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(rev)
    return snap


def test_cached_snapshot_follows_hf_home(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "a"))
    snap = _fake_snapshot(tmp_path / "a")
    assert hub_cache_dir() == tmp_path / "a" / "hub" and datasets_cache_dir() == tmp_path / "a" / "datasets"
    assert cached_snapshot("org/name") == snap
    assert cached_snapshot("org/other") is None
    monkeypatch.setenv("HF_HOME", str(tmp_path / "b"))  # changed after import: seen
    assert cached_snapshot("org/name") is None


def test_offline_reason(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert offline_reason() == "HF_DATASETS_OFFLINE=1 is set"
    assert offline_reason(("HF_HUB_OFFLINE",)) is None
