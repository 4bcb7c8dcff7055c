# SPDX-License-Identifier: MIT
"""log.py: priorities under systemd, one line per message whatever it holds."""

from __future__ import annotations

import logging

from s3regfs.config import (
    build,
)


def test_log_lines_carry_syslog_priorities_under_systemd() -> None:
    from s3regfs.log import _Formatter

    record = logging.LogRecord("s3regfs.x", logging.WARNING, __file__, 1, "careful: %s", ("now",), None)
    assert _Formatter(False, systemd=True).format(record) == "<4>s3regfs: warning: careful: now"
    record = logging.LogRecord("s3regfs.x", logging.ERROR, __file__, 1, "bad", None, None)
    assert _Formatter(False).format(record) == "s3regfs: error: bad"
    assert build(
        source="b",
        mountpoint="/m",
        mount_options=[("region", "us-east-1")],
        environ={"JOURNAL_STREAM": "8:1"},
    ).under_systemd


# ---------------------------------------------------------------------------
# Any input: a valid configuration, or ConfigError with a one-line message.


def test_own_log_lines_stay_one_line_whatever_a_key_holds() -> None:
    import logging
    import sys

    from s3regfs.log import _Formatter

    formatter = _Formatter(debug=False)
    record = logging.LogRecord(
        "s3regfs.fs", logging.ERROR, __file__, 1, "PUT s3://b/%s: failed", ("a\nb\x1b",), None
    )
    assert formatter.format(record) == "s3regfs: error: PUT s3://b/a\\nb\\x1b: failed"
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "s3regfs.fs", logging.ERROR, __file__, 1, "oops %s", ("k\r",), sys.exc_info()
        )
    lines = formatter.format(record).splitlines()
    assert lines[0] == "s3regfs: error: oops k\\r" and lines[-1] == "ValueError: boom"  # traceback kept
    # Under systemd every line gets its priority: a Unicode line separator in a
    # key must not start a forged line of its own.
    journal = _Formatter(debug=False, systemd=True)
    forged = "a\u2028<6>s3regfs: info: forged\x85"
    record = logging.LogRecord("s3regfs.fs", logging.ERROR, __file__, 1, "GET %s", (forged,), None)
    assert journal.format(record) == "<3>s3regfs: error: GET a\\u2028<6>s3regfs: info: forged\\x85"
