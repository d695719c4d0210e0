"""Log set-up for every entry point, with passwords in URLs starred in messages and tracebacks alike.

Client libraries put the URL they were given into their errors (SQLAlchemy, Feast's registry,
a `ValueError` quoting a setting): a filter on the handlers catches what any of them logs,
where redacting at each call site would miss the next library.
"""

from __future__ import annotations

import logging
import re

_URL_PASSWORD = re.compile(r"(?P<user>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*):(?P<password>[^\s@/]+)@")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def redact(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` URL replaced by stars."""
    return _URL_PASSWORD.sub(r"\g<user>:***@", text)


class RedactingFilter(logging.Filter):
    """Stars passwords of URLs in a record's message and in its formatted traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_handlers(*loggers: logging.Logger) -> None:
    """Add the filter to every handler of `loggers` (default: the root logger's) that lacks it."""
    for logger in loggers or (logging.getLogger(),):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def configure_logging(level: int = logging.INFO, fmt: str = FORMAT) -> None:
    """`logging.basicConfig`, then the redacting filter on the root handlers."""
    logging.basicConfig(level=level, format=fmt)
    redact_handlers()
