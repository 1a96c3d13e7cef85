"""lit-grok's own errors: a mistake in what was asked for, whose message names the fix.

The ``lit-grok`` command prints these as one line; every other exception is a bug and keeps its traceback.
"""
from contextlib import contextmanager
from typing import Iterator

from lightning.fabric.utilities.exceptions import MisconfigurationException


class LitGrokError(Exception):
    """Base of the errors the CLI reports in one line: bad input or settings, never a defect of the code."""

    exit_code = 2  # the command's exit status, as argparse's for a usage error


class ConfigurationError(LitGrokError, MisconfigurationException, ValueError):
    """A setting, argument or input file that cannot work (a ``ValueError`` and Lightning's
    ``MisconfigurationException``, so callers catching either keep working)."""


class NonFiniteError(LitGrokError, FloatingPointError):
    """Training produced a non-finite loss or update; the message names the step and the fix."""


class RunInterrupted(LitGrokError):
    """The run stopped on a signal after writing its checkpoint; the message says where and how to resume."""

    exit_code = 130  # what a shell reports for a program stopped by Ctrl-C


class DirectionUnavailable(ValueError):
    """v_k does not exist in the current window (k > w, or σ_k = 0); results record it as unavailable."""


@contextmanager
def bad_input_is_configuration(who: str) -> Iterator[None]:
    """Report a ``ValueError`` of the pure math (``callbacks.functional``, which imports no Lightning) about the data
    a callback gave it (too few groups, misaligned shapes) as a ``ConfigurationError`` of that callback."""
    try:
        yield
    except ConfigurationError:
        raise
    except ValueError as err:
        raise ConfigurationError(f"{who}: {err}") from err
