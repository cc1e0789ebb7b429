"""The one exception type for user-facing errors."""


class MaarError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 1."""
