"""Print uv's index options equivalent to pip's configuration (pip.conf and PIP_* variables).

`make install` installs with uv (seconds instead of minutes); uv does not read pip's configuration, so the
package indexes and wheel directories a machine has configured for pip are passed on explicitly.

    .venv/bin/python tools/pip_index_args.py .venv/bin/pip   ->   --extra-index-url URL --find-links DIR ...
"""

import shlex
import subprocess
import sys

OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links"}


def uv_args(config_list: str) -> list[str]:
    args: list[str] = []
    for line in config_list.splitlines():
        key, _, value = line.partition("=")
        option = OPTIONS.get(key.rsplit(".", 1)[-1])
        if option is None:
            continue
        for item in shlex.split(value)[0].split() if value else []:
            if [option, item] not in [args[i:i + 2] for i in range(0, len(args), 2)]:
                args += [option, item]
    if any(a in ("--extra-index-url", "--find-links") for a in args[::2]):
        args += ["--index-strategy", "unsafe-best-match"]  # pip's behaviour: best version across all indexes
    return args


if __name__ == "__main__":
    pip = sys.argv[1] if len(sys.argv) > 1 else "pip"
    out = subprocess.run([pip, "config", "list"], capture_output=True, text=True).stdout
    print(" ".join(shlex.quote(a) for a in uv_args(out)))
