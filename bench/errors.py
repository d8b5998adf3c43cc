"""User-facing errors.

Every error a user can cause (bad config, unknown name, wrong shape, missing data set,
tampered file) is raised as a :class:`RobustaxError` whose message is one line naming what
is wrong and how to fix it. The CLI prints that line to stderr and exits with status 2.
stderr carries robustax's own one-line messages only: what a third-party library would warn
about around a call (absl, Orbax, matplotlib) is silenced there with :func:`quiet`, and any
message naming user input goes through :func:`printable` (no raw control characters).
"""

import contextlib
import logging
import sys
import warnings


class RobustaxError(Exception):
    """A problem with the user's input; the message is one line: what is wrong, and the fix."""


class ConfigError(RobustaxError):
    """A sweep config or an attack/model/defense specification is invalid."""


class DataError(RobustaxError):
    """A data set cannot be loaded, or arrays have the wrong shape, dtype or range."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's notice before preemption), raised in the main thread like
    Ctrl-C's KeyboardInterrupt, so a run ends the same way: finished cells kept, exit 143."""


def warn(message: str) -> None:
    """Prints a one-line warning on stderr: something was repaired (a damaged cell
    recomputed, a corrupt file set aside) and the run goes on."""
    print(f"robustax: warning: {printable(message)}", file=sys.stderr, flush=True)


def printable(text: str) -> str:
    """``text`` safe for a terminal and one line: every character that is not printable
    (control characters such as ESC, CR, LF, NUL, TAB; format characters such as bidi
    overrides) written as its Python escape (``\\x1b``, ``\\r``, ``\\u202e``); the rest,
    non-ASCII letters included, as it is."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


@contextlib.contextmanager
def quiet(*loggers: str):
    """Third-party warnings silenced around a call: Python warnings (Orbax's UserWarnings,
    matplotlib's missing glyphs and layout notes) and the log records below ERROR of
    ``absl`` and the named ``loggers``. What they would say, robustax says in its own line
    when it matters."""
    saved = [(lg, lg.level) for lg in map(logging.getLogger, ("absl", *loggers))]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)
