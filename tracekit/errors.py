"""Errors that reach the user as one line naming the file and the problem."""

from __future__ import annotations


class TracekitError(Exception):
    """A problem the user can act on; the CLI prints it as one line without a traceback."""


class TraceError(TracekitError):
    """A trace file that cannot be imported."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # Pickled by its own arguments (Exception pickles self.args, the one message, which this
        # __init__ cannot take back): `import -j N` returns it from parser processes.
        return (type(self), (self.path, self.problem))
