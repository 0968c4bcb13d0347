"""The error a run's data raises when it cannot serve the run (re-exported by :mod:`distill_toolkit.data.loading`)."""


class DataError(ValueError):
    """The data cannot serve the run; the message names the file or split, the row and the fix."""
