"""User-facing errors.

Every error a user can cause (bad config, unknown name, wrong shape, missing data set,
tampered file) is raised as a :class:`RobustaxError` whose message is one line naming what
is wrong and how to fix it. The CLI prints that line to stderr and exits with status 2.
"""


class RobustaxError(Exception):
    """A problem with the user's input; the message is one line: what is wrong, and the fix."""


class ConfigError(RobustaxError):
    """A sweep config or an attack/model/defense specification is invalid."""


class DataError(RobustaxError):
    """A data set cannot be loaded, or arrays have the wrong shape, dtype or range."""


def warn(message: str) -> None:
    """Prints a one-line warning on stderr: something was repaired (a damaged cell
    recomputed, a corrupt file set aside) and the run goes on."""
    import sys

    print(f"robustax: warning: {message}", file=sys.stderr, flush=True)
