"""`python -m settings show | docs | exec -- COMMAND`: the resolved settings, for people and for other tools.

`exec` runs a command with every setting exported as its `FRAUDPIPE_*`
variable, defaults and the data directory resolved: Feast's CLI fills its
`feature_store.yaml` placeholders from them (`make feast`).
"""

from __future__ import annotations

import os
import shutil
import sys

from settings.base import Settings, SettingsError, load_settings
from settings.docs import reference


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str]) -> None:
    if argv[:1] == ["show"]:
        # Secrets print as stars: SecretStr's repr.
        for name, value in _settings().model_dump().items():
            print(f"{name} = {value}")
        return
    if argv[:1] == ["docs"]:
        print(reference(), end="")
        return
    if argv[:1] == ["exec"] and len(argv) > 1:
        command = argv[2:] if argv[1] == "--" else argv[1:]
        executable = shutil.which(command[0]) if command else None
        if executable is None:
            raise SystemExit(f"settings exec: no such command {command[:1]}")
        os.execve(executable, command, {**os.environ, **_settings().to_env()})
    raise SystemExit("usage: python -m settings show | docs | exec -- COMMAND [ARGS...]")


main(sys.argv[1:])
