"""The one exception a user sees: a bad spec, reported on one line."""

from __future__ import annotations

from .escape import terminal


class SpecError(Exception):
    """A problem in a model spec.

    Rendered as ``FILE:LINE: KEY: problem`` (line and key when known), which is
    the one line the command line prints before exiting with code 2.
    """

    def __init__(self, message: str, *, key: str | None = None,
                 line: int | None = None, file: str | None = None):
        super().__init__(message)
        self.message = message
        self.key = key
        self.line = line
        self.file = file

    def located(self, *, file: str | None = None, key: str | None = None,
                line: int | None = None) -> "SpecError":
        """Fill in whatever location this error does not carry yet."""
        self.file = self.file or file
        self.key = self.key or key
        self.line = self.line or line
        return self

    def __str__(self) -> str:
        where = self.file or "<spec>"
        if self.line:
            where += f":{self.line}"
        if self.key:
            where += f": {self.key}"
        # one line, and nothing in it that a terminal would act on (spec text is data)
        return terminal(f"{where}: {' '.join(self.message.splitlines())}")
