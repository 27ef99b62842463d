"""Process-level side of the command line: how every failure becomes one line and an exit status,
a closed stdout, warnings as one line, and vLLM's flag spellings that are not plain option aliases."""

from __future__ import annotations

import sys

import typer

from apex_plan.errors import InputError


def cli_exception_types() -> dict[str, tuple[type, ...]]:
    """Click's exception classes for whichever click this typer uses (typer < 0.29 uses click itself,
    0.29+ a vendored copy with no `Exit`; typer.Exit / typer.Abort exist in every version)."""
    import importlib
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    found: dict[str, tuple[type, ...]] = {}
    for cls in ("NoArgsIsHelpError", "UsageError", "ClickException", "Exit", "Abort"):
        found[cls] = tuple({getattr(m, cls) for m in mods if isinstance(getattr(m, cls, None), type)})
    found["Exit"] += tuple(t for t in (getattr(typer, "Exit", None),) if isinstance(t, type))
    found["Abort"] += tuple(t for t in (getattr(typer, "Abort", None),) if isinstance(t, type))
    return found


def _error(msg: str) -> None:
    print(f"apex-plan: error: {msg}".replace("\n", " ").rstrip(), file=sys.stderr)


def stdout_closed() -> None:
    """The reader of our stdout went away (`apex-plan models | head -1`): drop what is left quietly."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def exit_status(e: BaseException) -> int:
    """Print what went wrong as one line on stderr (help for a bare command) and return the status."""
    import errno
    t = cli_exception_types()
    if isinstance(e, InputError):
        _error(str(e))
        return 2
    if isinstance(e, t["NoArgsIsHelpError"]):      # bare `apex-plan` / `apex-plan search`: help
        msg = e.format_message()
        if msg.strip():
            print(msg)
        return 0
    if isinstance(e, t["UsageError"]):              # bad flags: one line naming the option
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "apex-plan"
        _error(f"{e.format_message()} (see '{cmd} --help')")
        return 2
    if isinstance(e, t["ClickException"]):
        _error(e.format_message())
        return int(getattr(e, "exit_code", 1) or 1)
    if isinstance(e, t["Exit"]):
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        return code if isinstance(code, int) else 0
    if isinstance(e, (KeyboardInterrupt, *t["Abort"])):
        _error("interrupted")
        return 130
    if isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno == errno.EPIPE):
        stdout_closed()
        return 1
    if isinstance(e, OSError):                     # e.g. a full disk under stdout
        stdout_closed()
        where = f" '{e.filename}'" if getattr(e, "filename", None) else ""
        _error(f"cannot read or write{where}: {e.strerror or e} (check the path and free space)")
        return 1
    if isinstance(e, MemoryError):
        _error("out of memory (use fewer requests, a shorter trace or a smaller --max-num-seqs)")
        return 1
    # anything else is a bug in apex-plan, not in the input: still one line, never a traceback
    detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
    _error(f"internal error {type(e).__name__}{': ' + detail if detail else ''} "
           "(please report it with the command line that caused it)")
    return 1


def one_line_warnings() -> None:
    """Warnings (e.g. dropped trace rows) print as one 'apex-plan: warning:' line each. Numeric
    warnings of numpy (overflow, 0/0, the mean of an empty slice) never reach the user: the results
    they touch are checked where they are made (finite metrics, field errors on the inputs)."""
    import warnings

    import numpy as np

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        print(f"apex-plan: warning: {message}".replace("\n", " "), file=file or sys.stderr)
    warnings.showwarning = show
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    np.seterr(all="ignore")


# vLLM's flag spellings that are not plain option aliases: rewritten before parsing
_VLLM_FLAGS = {"--enable-chunked-prefill": "--chunked-prefill=on", "--no-enable-chunked-prefill": "--chunked-prefill=off",
               "--no-chunked-prefill": "--chunked-prefill=off", "--enable-prefix-caching": "--prefix-caching=on",
               "--no-enable-prefix-caching": "--prefix-caching=off"}


def vllm_spellings(argv: list[str]) -> list[str]:
    """`--enable-chunked-prefill[=true|false]` -> `--chunked-prefill=on|off`, the same for
    `--[no-]enable-prefix-caching` -> `--prefix-caching` (vLLM's spellings of ours)."""
    out = []
    for arg in argv:
        if arg == "--":
            out += argv[len(out):]
            break
        name, eq, value = arg.partition("=")
        if name in ("--enable-chunked-prefill", "--enable-prefix-caching") and eq:
            arg = name.replace("--enable-", "--") + "=" + {"true": "on", "false": "off"}.get(value.lower(), value)
        out.append(_VLLM_FLAGS.get(arg, arg))
    return out
