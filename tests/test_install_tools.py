"""The uv install is given exactly the indexes pip is configured with (tools/pip_index_args.py)."""

import importlib.util

from conftest import ROOT


def _module():
    spec = importlib.util.spec_from_file_location("pip_index_args", ROOT / "tools" / "pip_index_args.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pip_config_becomes_uv_index_options():
    listing = "\n".join([
        ":env:.cert='/etc/ssl/certs/ca.crt'",
        ":env:.find-links='/opt/wheels'",
        "global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'",
        "global.find-links='/opt/wheels'",           # the same directory from two sources: once
        "global.timeout='60'",
    ])
    assert _module().uv_args(listing) == [
        "--find-links", "/opt/wheels", "--extra-index-url", "file:///opt/a/simple",
        "--extra-index-url", "file:///opt/b/simple", "--index-strategy", "unsafe-best-match"]


def test_no_pip_configuration_means_uv_defaults():
    assert _module().uv_args("") == []
    assert _module().uv_args("global.index-url='https://pypi.example/simple'") == [
        "--index-url", "https://pypi.example/simple"]
