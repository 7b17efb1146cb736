"""The one exception type the command line turns into a one-sentence error and a non-zero exit."""


class SmallsetError(Exception):
    """A user-facing error: the message says what is wrong and what to do about it."""
