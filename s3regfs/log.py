# SPDX-License-Identifier: MIT
"""Logging set-up: one logger per module, secrets redacted from every line.

:func:`setup_logging` installs one handler on the root logger (stderr in the
foreground or before the daemon detaches; syslog after) with
:class:`RedactingFilter`, and maps the driver's ``loglevel`` values onto
botocore's loggers.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

_REDACTIONS = (
    # Authorization headers (SigV4 and SigV2) and session tokens, in any quoting.
    (
        re.compile(r"(?i)(['\"]?authorization['\"]?\s*[:=]\s*['\"]?(?:b['\"])?)[^'\",}\r\n]+"),
        r"\1<redacted>",
    ),
    (
        re.compile(r"(?i)(['\"]?x-amz-security-token['\"]?\s*[:=]\s*['\"]?(?:b['\"])?)[^'\",}\r\n]+"),
        r"\1<redacted>",
    ),
    # botocore.auth's debug line "Signature:\n<hex>" (the Authorization header's
    # signature: enough to replay that request for 15 minutes).
    (re.compile(r"(?m)(^Signature:\s*)\S+"), r"\1<redacted>"),
    # Presigned query strings.
    (
        re.compile(r"(?i)((?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature)=)[^&\s'\"]+"),
        r"\1<redacted>",
    ),
    # Parameters by name, in YAML, -o or repr form.
    (
        re.compile(
            r"(?i)(['\"]?(?:secretkey|sessiontoken|aws_secret_access_key|aws_session_token)['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+"
        ),
        r"\1<redacted>",
    ),
)


class RedactingFilter(logging.Filter):
    """Removes credentials from a record's final message (and known secret values)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message, self._secrets)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text


class _DemoteToDebug(logging.Filter):
    """Demote the records *matches* picks to debug: a library's warning that
    says nothing to act on, or what s3regfs's own message says better."""

    def __init__(self, matches: Callable[[str], bool]) -> None:
        super().__init__()
        self._matches = matches

    def filter(self, record: logging.LogRecord) -> bool:
        if self._matches(record.getMessage()):
            record.levelno = logging.DEBUG
            record.levelname = "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def _release_reply(message: str) -> bool:
    """pyfuse3's "fuse_<op>(): fuse_reply_* failed with No such file or
    directory": the kernel no longer waits for that reply (the request was
    interrupted, or was a read-ahead or release nobody waits for); the
    operation itself completed, nothing is lost."""
    return message.startswith("fuse_") and "fuse_reply_" in message and "No such file or directory" in message


def _hostname_mismatch(message: str) -> bool:
    """urllib3's "Certificate did not match expected hostname: ... Certificate:
    {...}": the failed request's error says it in one line."""
    return message.startswith("Certificate did not match expected hostname")


#: Library loggers and the records of theirs demoted to debug.
_DEMOTED = (("pyfuse3", _release_reply), ("urllib3.connection", _hostname_mismatch))


#: syslog priorities by logging level, for journald's "<N>" line prefixes.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


#: What could end a line: C0 and C1 controls, DEL, and the Unicode line and
#: paragraph separators (str.splitlines breaks on all of them).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class _Formatter(logging.Formatter):
    """One line per record; under systemd with the syslog priority journald reads."""

    def __init__(self, debug: bool, systemd: bool = False) -> None:
        fmt = (
            "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
            if debug
            else "s3regfs: %(levelname)s: %(message)s"
        )
        super().__init__(fmt, datefmt="%H:%M:%S")
        self._systemd = systemd

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        if record.name.startswith("s3regfs"):
            # s3regfs's own messages are one line each, whatever a key or an S3
            # error message holds (a newline in a key must not forge a line);
            # a traceback, added after this, keeps its lines.
            record.message = _CONTROL.sub(lambda m: repr(m.group())[1:-1], record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        line = super().format(record)
        if self._systemd:
            priority = _PRIORITIES.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
            line = "\n".join(f"<{priority}>{part}" for part in line.split("\n"))
        return line


def setup_logging(
    *,
    debug: bool,
    loglevel: frozenset[str] = frozenset(),
    secrets: Iterable[str] = (),
    systemd: bool = False,
) -> None:
    """Log to stderr: INFO and above (DEBUG with *debug*), secrets redacted;
    with *systemd*, each line starts with its syslog priority (``<6>``)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(debug, systemd))
    handler.addFilter(RedactingFilter(secrets))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name, matches in _DEMOTED:
        library_log = logging.getLogger(name)
        if not any(isinstance(f, _DemoteToDebug) for f in library_log.filters):
            library_log.addFilter(_DemoteToDebug(matches))
    # Third-party libraries stay at WARNING unless loglevel asks for more.
    for name in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    apply_loglevel(loglevel)
    if not debug:
        logging.getLogger("s3regfs").setLevel(logging.INFO)


def apply_loglevel(flags: frozenset[str]) -> None:
    """Map the driver's loglevel flags onto botocore's loggers."""
    loggers: dict[str, tuple[str, ...]] = {
        "debug": ("botocore.endpoint", "botocore.parsers"),
        "signing": ("botocore.auth", "botocore.endpoint"),
        "httpbody": ("botocore.parsers", "botocore.endpoint", "urllib3.connectionpool"),
        "retries": ("botocore.retries", "botocore.retryhandler", "s3regfs.storage.s3"),
        "requesterrors": ("botocore.endpoint", "s3regfs.storage.s3"),
        "eventstreambody": ("botocore.eventstream",),
    }
    for flag in flags:
        for name in loggers.get(flag, ()):
            logging.getLogger(name).setLevel(logging.DEBUG)


def detach_to_syslog(secrets: Iterable[str] = ()) -> None:
    """After daemonizing: log to syslog if there is one, else nowhere."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    sink: logging.Handler
    if os.path.exists("/dev/log"):
        sink = logging.handlers.SysLogHandler(address="/dev/log")
        sink.setFormatter(logging.Formatter("s3regfs[%(process)d]: %(levelname)s: %(message)s"))
    else:
        sink = logging.NullHandler()
    sink.addFilter(RedactingFilter(secrets))
    root.addHandler(sink)
