"""Errors a user can cause, each with its own documented exit code.

The command line catches `SvhnJaxError`, prints its message (what is wrong and
what to do) and exits with `exit_code`, so no user mistake ends in a traceback.
All of them are `ValueError`s, so library callers can catch them that way.
"""

import os
import sys

EXIT_OK = 0
EXIT_CHECK_FAILED = 1   # a gradient check crossed its threshold
EXIT_USAGE = 2          # bad argument or bad array passed in
EXIT_DATA = 3           # data missing, unreadable, corrupt or invalid
EXIT_NETWORK = 4        # download failed (host unreachable, checksum mismatch)
EXIT_DIVERGED = 5       # training produced a non-finite loss
EXIT_PROCESS_LOST = 6   # another process of a several-process run died or stopped answering
EXIT_INTERRUPTED = 130  # Ctrl-C; a checkpoint was written first


class SvhnJaxError(ValueError):
    """Bad input from the user; `exit_code` says how the CLI exits."""

    exit_code = EXIT_USAGE


class DataError(SvhnJaxError):
    """Data missing, unreadable, corrupt, or of the wrong shape/dtype/range."""

    exit_code = EXIT_DATA


class DownloadError(SvhnJaxError):
    """The official files could not be fetched or failed their checksum."""

    exit_code = EXIT_NETWORK


class Diverged(SvhnJaxError):
    """Training produced a non-finite loss; the run folder says where."""

    exit_code = EXIT_DIVERGED


class Interrupted(SvhnJaxError):
    """Ctrl-C during training, after a checkpoint was written."""

    exit_code = EXIT_INTERRUPTED


class ProcessLost(SvhnJaxError):
    """Another process of the run died or stopped answering; every process stops."""

    exit_code = EXIT_PROCESS_LOST


def error_types() -> dict:
    """Every error type by name (another process's error is re-raised as its own type)."""
    found, todo = {}, [SvhnJaxError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo += cls.__subclasses__()
    return found


def run(fn, *args) -> int:
    """fn(*args) for a command line: a user's mistake becomes one `error:` line on stderr
    and its exit code, Ctrl-C outside training (nothing to save yet) exit code 130."""
    try:
        return fn(*args)
    except SvhnJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        if isinstance(e, ProcessLost):   # not through JAX's shutdown, which would wait for it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.exit_code)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
