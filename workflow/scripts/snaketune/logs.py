"""Send a rule's stdout, stderr and logging to its log file; user errors end as one clear line."""

from __future__ import annotations

import contextlib
import logging
import sys

from .errors import SnaketuneError

__all__ = ["to_log_file"]

log = logging.getLogger("snaketune")


@contextlib.contextmanager
def to_log_file(path):
    """Append everything the step prints to ``path``; a SnaketuneError ends the step as one line, exit 1.

    Snakemake shows the log of a failed job, so the one-line message reaches the user either way.
    """
    with open(path, "a", encoding="utf-8", buffering=1) as fh:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield fh
        except SnaketuneError as err:
            # One clear line, no traceback: the job fails and Snakemake removes its outputs.
            fh.write(f"ERROR: {err}\n")
            old_err.write(f"snaketune error: {err}\n")
            raise SystemExit(1) from None
        finally:
            root.removeHandler(handler)
            sys.stdout, sys.stderr = old_out, old_err
