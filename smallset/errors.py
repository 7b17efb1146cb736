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

    def for_command_line(self, flags: dict[str, str] | None = None) -> str:
        """The message with the option's name written as its command-line flag (``flags`` maps the names
        whose flag differs, e.g. ``model_kwargs`` → ``--model-arg``)."""
        import re

        text = str(self)
        if self.option:
            flag = (flags or {}).get(self.option) or "--" + self.option.replace("_", "-")
            text = re.sub(rf"(?<![\w-]){re.escape(self.option)}(?![\w-])", flag, text)
        return text


class SmallsetWarning(UserWarning):
    """Something the user should know that does not stop the run; the command line prints it as one line,
    ``smallset: warning: …``."""
