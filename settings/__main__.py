"""`python -m settings show | docs | exec -- COMMAND`: the resolved settings, for people and for other tools.

`show` prints every setting (secrets as stars); `docs` prints the reference
of docs/configuration.md. `exec` runs a command with every setting exported
as its `FRAUDPIPE_*` variable, defaults and the data directory resolved:
Feast's CLI fills its `feature_store.yaml` placeholders from them
(`make feast`), Dagster's `dg dev` its instance's (`make dev`).

`exec` replaces this process with the command (no child, no wait), so a
Ctrl-C or a SIGTERM reaches the command itself, and with SIGINT and SIGTERM at
their defaults even where this process was started with them ignored (the
background job of a non-interactive shell): Dagster's `dg dev`, a Python
program, then stops on the first Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys

from settings.base import load_settings_or_exit
from settings.docs import reference

USAGE = "usage: python -m settings show | docs | exec -- COMMAND [ARGS...]"


def _exec(command: list[str]) -> None:
    env = {**os.environ, **load_settings_or_exit().to_env()}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvpe(command[0], command, env)
    except OSError as err:  # not found, not executable: the shell's status for it
        print(f"settings exec: {command[0]}: {err.strerror}", file=sys.stderr)
        raise SystemExit(127) from None


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(f"{USAGE}\n\n{__doc__}", end="")
        return
    if argv[:1] == ["show"]:
        # Secrets print as stars: SecretStr's repr.
        for name, value in load_settings_or_exit().model_dump().items():
            print(f"{name} = {value}")
        return
    if argv[:1] == ["docs"]:
        print(reference(), end="")
        return
    command = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    if argv[:1] == ["exec"] and command:
        _exec(command)
    print(USAGE, file=sys.stderr)
    raise SystemExit(2)


main(sys.argv[1:])
