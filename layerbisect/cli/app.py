"""The `bisect` command: a thin layer over ``layerbisect.api``.

``bisect REF CAND`` is the main command: when the first argument is not a subcommand name,
``compare`` is implied. User errors print one line and exit with code 2: our ``InputError``s and
typer/click's own usage errors alike (the app runs in click's non-standalone mode so that its
boxed multi-line usage errors become one line too). SIGINT and SIGTERM raise ``Interrupted``
(``signals.py``), which no ``except Exception`` swallows: staged outputs are removed on the way
out (``outputs.py``), one line says so, and the exit code is the shell's 128 + signal (130, 143).
Command modules import torch inside their functions, so loading this module stays light.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from ..errors import InputError
from .errors import fail, interrupted
from .run_cmd import run
from .signals import Interrupted, install

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="layerbisect: find where and why a quantized LLM diverges from its reference.\n\n"
    "Main use: bisect REF.gguf CAND_DIR/ [--prompt ...] (same as `bisect compare`).",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("run")(run)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"layerbisect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """layerbisect: find where and why a quantized LLM diverges from its reference."""

_SUBCOMMANDS = {"run"}


def _register_optional() -> None:
    """Commands whose modules import heavier parts register here, so `bisect run` stays light."""
    try:
        from .compare_cmd import compare

        app.command("compare")(compare)
        _SUBCOMMANDS.add("compare")
    except ImportError:  # pragma: no cover - during development only
        pass
    for mod, name in (("audit_cmd", "audit"), ("demo_cmd", "demo"), ("capture_llamacpp_cmd", "capture-llamacpp")):
        try:
            m = __import__(f"layerbisect.cli.{mod}", fromlist=[name])
        except ImportError:  # pragma: no cover
            continue
        app.command(name)(getattr(m, name.replace("-", "_")))
        _SUBCOMMANDS.add(name)


_register_optional()


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-") and args[0] not in _SUBCOMMANDS and "compare" in _SUBCOMMANDS:
        args.insert(0, "compare")
    if not args:
        args = ["--help"]
    install()
    try:
        rv = app(args=args, prog_name="bisect", standalone_mode=False)
    except InputError as e:
        fail(e)
    except Interrupted as e:
        interrupted(e.signum)
    except KeyboardInterrupt:
        interrupted(signal.SIGINT)
    except typer.Abort:  # EOF on a prompt, or click's own view of an interrupt
        interrupted(signal.SIGINT)
    except typer.TyperException as e:  # click's usage errors (bad option, bad value): one line, exit 2
        cmd = f"{args[0]} " if args and args[0] in _SUBCOMMANDS else ""
        fmt = getattr(e, "format_message", None)
        fail(f"{fmt() if callable(fmt) else e} (see: bisect {cmd}--help)", code=int(getattr(e, "exit_code", 2)))
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
