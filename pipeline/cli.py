"""How the Hydra entry points end on bad input: one message that names the key, the value and the fix, exit code 2.

Hydra prints its own hint (``Set the environment variable HYDRA_FULL_ERROR=1 ...``) as the last line of every error
and exits 1, so a bad config value and a crash look alike. ``run_cli`` lets Hydra raise, prints the problem itself
(the available options, for an unknown group option or key) and keeps tracebacks for what is not a usage error.
``HYDRA_FULL_ERROR=1`` still gives Hydra's full traceback for everything.
"""
import os
import sys
import tempfile
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Callable

from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import CONF_DIR

#: Exit code of a run refused for its config or inputs (as argparse's bad command line).
USAGE_ERROR = 2

#: Errors that describe the user's config or inputs; anything else is a crash and keeps its traceback.
USAGE_ERRORS = (ValueError, TypeError, KeyError, OSError, HydraException, OmegaConfBaseException)


def run_cli(hydra_main: Callable[[], None], argv: list[str] | None = None) -> None:
    """Run a ``@hydra.main`` function; usage errors end in ``error: <problem>`` on stderr and exit code 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        hydra_main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its hint last
    try:
        check_output_root(sys.argv[1:] if argv is None else argv)
        hydra_main()
    except USAGE_ERRORS as error:
        print(f"error: {describe(error)}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def describe(error: BaseException) -> str:
    """The problem in words, with the available options where Hydra or OmegaConf know them."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return f"{group}={name} is not an option of {group}; available: {', '.join(sorted(error.options))}"
    cause = error.__cause__
    inner = cause or error.__context__  # OmegaConf re-raises a resolver's error without chaining it as the cause
    if isinstance(error, OmegaConfBaseException) and isinstance(inner, USAGE_ERRORS):
        return describe(inner)  # our own check, raised inside a resolver (e.g. a folder name)
    if isinstance(error, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        key = cause.full_key or getattr(cause, "key", "")
        schema = cause.object_type
        if "not in" in str(cause) and is_dataclass(schema):
            parent = key.rpartition(".")[0]
            known = ", ".join(sorted(f.name for f in fields(schema)))
            return f"{key} is not a config key; {parent or 'the config'} takes: {known}"
        return f"{key}: {str(cause).splitlines()[0]}"
    if isinstance(error, KeyError) and len(error.args) == 1:
        return str(error.args[0])
    return str(error).strip() or type(error).__name__


def check_output_root(argv: list[str]) -> None:
    """``output_root`` must be a folder this process can write in, before Hydra makes the run's folder in it."""
    given = [arg.split("=", 1)[1] for arg in argv if arg.lstrip("+").startswith("output_root=")]
    root = Path(given[-1] if given else OmegaConf.load(CONF_DIR / "config.yaml").output_root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)  # Hydra would make it next
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as error:
        raise OSError(f"output_root={root} is not a folder this process can write in ({error.strerror or error}): "
                      "set output_root to a writable folder, e.g. output_root=$HOME/xai-outputs") from None
