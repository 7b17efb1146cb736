"""The one exception type the command line turns into a one-sentence error and a non-zero exit."""
from __future__ import annotations


class SmallsetError(Exception):
    """A user-facing error: the message says what is wrong and what to do about it.

    Code below the command line names config fields and options by their Python name and passes it as
    ``option``; the command line shows that name as its flag (``batch_real`` → ``--batch-real``).
    """

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option

    def __reduce__(self):  # keep ``option`` across processes (Dask workers) and Prefect's result store
        return type(self), (str(self), self.option)

    def for_command_line(self) -> str:
        """The message with the option's name written as its command-line flag."""
        import re

        text = str(self)
        if self.option:
            flag = "--" + self.option.replace("_", "-")
            text = re.sub(rf"(?<![\w-]){re.escape(self.option)}(?![\w-])", flag, text)
        return text
