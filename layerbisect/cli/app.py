"""The `bisect` command: a thin layer over ``layerbisect.api``.

``bisect REF CAND`` is the main command: when the first argument is not a subcommand name,
``compare`` is implied. User errors print one line and exit with code 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import InputError
from .errors import fail
from .run_cmd import run

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="layerbisect: find where and why a quantized LLM diverges from its reference.\n\n"
    "Main use: bisect REF.gguf CAND_DIR/ [--prompt ...] (same as `bisect compare`).",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
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
    for mod, name in (("audit_cmd", "audit"), ("demo_cmd", "demo")):
        try:
            m = __import__(f"layerbisect.cli.{mod}", fromlist=[name])
        except ImportError:  # pragma: no cover
            continue
        app.command(name)(getattr(m, name))
        _SUBCOMMANDS.add(name)


_register_optional()


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-") and args[0] not in _SUBCOMMANDS and "compare" in _SUBCOMMANDS:
        args.insert(0, "compare")
    try:
        app(args=args, prog_name="bisect", standalone_mode=True)
    except InputError as e:
        fail(e)


if __name__ == "__main__":
    main()
