"""Errors that end a command with one line (``error: WHERE: WHAT``) instead of a traceback."""

from __future__ import annotations

import json


class UserError(Exception):
    """A problem with the user's data or options: ``where`` is the file (or flag) at fault."""

    def __init__(self, where: str, problem: str | None = None):
        if problem is None:
            # Re-raised from a DataLoader worker with one message holding the worker's traceback:
            # keep its last line, "pkg.DataError: WHERE: WHAT".
            last = [ln for ln in str(where).splitlines() if ln.strip()][-1:] or [str(where)]
            text = last[0].split("Error: ", 1)[-1]
            where, _, problem = text.partition(": ")
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = str(where), problem


class DataError(UserError):
    """Broken or missing data: a missing image, a bad caption count, malformed JSON, ..."""


class ConfigError(UserError):
    """An option that cannot work: an unknown model name, a missing weight file, ..."""


def read_json(path: str):
    """The JSON document in ``path``, or a :class:`DataError` naming the file and why it cannot be
    read, or where it is malformed or not UTF-8."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise DataError(path, f"cannot read it ({e.strerror or e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text ({e.reason})") from None
