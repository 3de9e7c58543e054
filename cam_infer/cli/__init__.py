"""``cam-infer``: demo, split, export, info, explain, bench, fuse, audit, diff, synthetic.

`arguments.py` declares the arguments (method names, options and benchmark cases come from the method
registry), `commands.py` has one function per command, named after it, that calls the module doing the job
and prints what it returns, and `main` turns every error a user can cause into one line
(``cam-infer: error: ...``) and exit 1, never a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings

from ..backends.sessions import leave_the_cores_to_the_runtime
from ..errors import CamInferError, PrecisionWarning
from . import commands
from .arguments import build_parser

def run() -> None:
    """The console script: `main`, then exit with its code. A run interrupted while a pool thread is still inside
    a batch (a Score-CAM image can take minutes) exits at once: its journal is closed and its workers stopped by
    then, and Python would otherwise wait at exit for the batch to end."""
    code = main()
    if code in (130, 128 + signal.SIGTERM) and _busy_threads():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _busy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    leave_the_cores_to_the_runtime()
    warnings.showwarning = _note_precision(warnings.showwarning)
    terminate = signal.getsignal(signal.SIGTERM)
    if args.command in FOLDER_RUNS and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)
    try:
        code = getattr(commands, args.command)(args)
        sys.stdout.flush()          # a closed pipe shows here, inside the handlers below
        return code
    except CamInferError as exc:
        print(f"cam-infer: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except BrokenPipeError:         # `cam-infer info --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:          # a path the user gave: read-only, missing, a file where a folder goes
        where = f" '{exc.filename}'" if exc.filename else ""
        print(f"cam-infer: error: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except MemoryError as exc:     # a size or batch beyond this machine: say so, not an internal error
        detail = " ".join(str(exc).split())[:200]
        print(f"cam-infer: error: out of memory{f' ({detail})' if detail else ''}; this machine cannot hold what "
              "was asked (a smaller input size, batch or method option)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cam-infer: interrupted" + _resumes(args), file=sys.stderr)
        return 130
    except Terminated:
        print("cam-infer: terminated" + _resumes(args), file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as exc:  # an internal error: still one line unless --debug
        if args.debug:
            raise
        first = " ".join(str(exc).split())[:300]
        print(f"cam-infer: internal error: {type(exc).__name__}: {first} (rerun with --debug for details)",
              file=sys.stderr)
        return 3
    finally:
        if signal.getsignal(signal.SIGTERM) is _interrupted:
            signal.signal(signal.SIGTERM, terminate)


FOLDER_RUNS = ("explain", "audit", "diff")      # a SIGTERM (systemd, docker stop, timeout) ends them as Ctrl-C does


def _resumes(args) -> str:
    return " (run the same command again to resume)" if args.command in FOLDER_RUNS else ""


class Terminated(BaseException):
    """A SIGTERM, raised where the run is, so that its workers are stopped and its journal kept, as on Ctrl-C."""


def _interrupted(signum, frame):
    raise Terminated


def _note_precision(show):
    """`warnings.showwarning` that prints a `PrecisionWarning` as one line (``cam-infer: note: ...``)."""
    def shown(message, category, *rest, **options):
        if issubclass(category, PrecisionWarning):
            print(f"cam-infer: note: {message}", file=sys.stderr)
        else:
            show(message, category, *rest, **options)
    return shown


__all__ = ["build_parser", "main"]
