# SPDX-License-Identifier: MIT
"""The command line: ``s3regfs [-f] [-d] [--config FILE] [-o OPTS]... [SOURCE] MOUNTPOINT``.

Options may come before or after the positional arguments (mount.fuse3
passes ``SOURCE MOUNTPOINT -o OPTS``).  Without ``-f`` the process forks:
the parent returns once the child's mount answers (exit 0) or has failed
(the child's one-line error and exit code), like sshfs and s3fs.  Every
QuietError becomes one line on stderr and its exit code, never a traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from s3regfs import __version__
from s3regfs.config import SECRET_PARAMS, Config, build, mount_option_spans, split_mount_options
from s3regfs.errors import EXIT_CONFIG, ConfigError, QuietError
from s3regfs.log import detach_to_syslog, setup_logging
from s3regfs.options import help_lines

log = logging.getLogger(__name__)

USAGE = "usage: s3regfs [-f] [-d] [--config FILE] [-o OPT[=VAL][,OPT[=VAL]...]]... [BUCKET[:/ROOTDIRECTORY]] MOUNTPOINT"


@dataclass
class Arguments:
    foreground: bool = False
    debug: bool = False
    config_file: str | None = None
    mount_options: list[tuple[str, str | None]] = field(default_factory=list)
    positionals: list[str] = field(default_factory=list)
    action: str = "mount"


def parse_argv(argv: Sequence[str]) -> Arguments:
    """Parse the command line (see the module docstring); ConfigError on misuse."""
    args = Arguments()
    items = list(argv)
    index = 0

    def value_of(option: str) -> str:
        nonlocal index
        index += 1
        if index >= len(items):
            raise ConfigError(f"option {option} needs a value\n{USAGE}")
        return items[index]

    only_positionals = False
    while index < len(items):
        item = items[index]
        if only_positionals or not item.startswith("-") or item == "-":
            args.positionals.append(item)
        elif item == "--":
            only_positionals = True
        elif item in ("-f", "--foreground"):
            args.foreground = True
        elif item in ("-d", "--debug"):
            args.debug = True
            args.foreground = True
        elif item in ("-h", "--help"):
            args.action = "help"
        elif item in ("-V", "--version"):
            args.action = "version"
        elif item == "--config":
            args.config_file = value_of(item)
        elif item.startswith("--config="):
            args.config_file = item[len("--config=") :]
        elif item == "-o":
            args.mount_options.extend(split_mount_options(value_of(item)))
        elif item.startswith("-o"):
            args.mount_options.extend(split_mount_options(item[2:]))
        else:
            raise ConfigError(f"unknown option {item}\n{USAGE}")
        index += 1
    return args


def help_text() -> str:
    lines = [
        USAGE,
        "",
        "Mount the S3 storage of a container registry (CNCF Distribution, GitLab).",
        "",
        "  -f, --foreground   stay in the foreground",
        "  -d, --debug        log debug messages to stderr (implies -f)",
        "  --config FILE      read the storage.s3 section of the registry's config.yml",
        "  -o OPTS            comma-separated options (write a comma in a value as \\,)",
        "  -V, --version      print the version",
        "",
    ]
    lines += help_lines()
    lines += [
        "",
        "Accepted and ignored (mount(8)/fstab): _netdev, nofail, auto, noauto, user, users,",
        "defaults, dev, nodev, suid, nosuid, exec, noexec, atime options, x-systemd.*",
    ]
    return "\n".join(lines)


def build_config(args: Arguments) -> Config:
    if len(args.positionals) == 1:
        source, mountpoint = None, args.positionals[0]
    elif len(args.positionals) == 2:
        source, mountpoint = args.positionals
    else:
        raise ConfigError(f"expected [SOURCE] MOUNTPOINT\n{USAGE}")
    return build(
        source=source,
        mountpoint=mountpoint,
        mount_options=args.mount_options,
        config_file=args.config_file,
        foreground=args.foreground,
        debug=args.debug,
    )


def _secrets(config: Config | None) -> list[str]:
    """Values no log line may show: the driver's, and those boto3's chain reads
    from the environment."""
    if config is None:
        return []
    return [
        config.driver.secretkey,
        config.driver.sessiontoken,
        os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        os.environ.get("AWS_SESSION_TOKEN", ""),
    ]


def secret_value_spans(args: Sequence[bytes], names: frozenset[str]) -> list[tuple[int, int, int]]:
    """Where the values of the options *names* are in *args* (argv as bytes):
    (argument index, start, end) of every ``NAME=VALUE`` item of an ``-o``
    option list (``-o LIST`` or ``-oLIST``), split as the option parser
    splits them (:func:`s3regfs.config.mount_option_spans`).
    Nothing else is touched: not the program, the bucket, the mount point."""
    spans: list[tuple[int, int, int]] = []
    for index, arg in enumerate(args):
        if arg.startswith(b"-o") and len(arg) > 2:
            begin = 2
        elif index > 0 and args[index - 1] == b"-o":
            begin = 0
        else:
            continue
        # One character per byte: the parser's spans are byte offsets.
        text = arg[begin:].decode("latin-1")
        for start, end in mount_option_spans(text):
            name, equals, _ = text[start:end].partition("=")
            value_start = start + len(name) + 1
            # The key as the parser reads it (argv is decoded as Python does).
            key = arg[begin + start : begin + start + len(name)].decode("utf-8", "surrogateescape")
            if equals and key.strip() in names and value_start < end:
                spans.append((index, begin + value_start, begin + end))
    return spans


def hide_from_ps(names: frozenset[str]) -> int:
    """Overwrite the values of the ``-o`` options *names* with ``x`` in this
    process's own argument memory, the bytes ps and /proc/PID/cmdline show (as
    MySQL's client does with -p), so a secret given with -o is not visible for
    the life of the mount; it still is from the exec until here.  Only those
    values change: the rest of the command line stays as typed.  Python keeps
    its own copy of argv.  Linux only, best effort; returns how many values
    were overwritten."""
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        # Fields 48 and 49 of proc(5), counted from field 3 (the state).
        start, end = int(fields[45]), int(fields[46])
    except (OSError, IndexError, ValueError):
        return 0
    area = ctypes.string_at(start, end - start)
    args = area.rstrip(b"\0").split(b"\0")
    offsets = []
    offset = 0
    for arg in args:
        offsets.append(offset)
        offset += len(arg) + 1
    spans = secret_value_spans(args, names)
    for index, value_start, value_end in spans:
        ctypes.memset(start + offsets[index] + value_start, ord("x"), value_end - value_start)
    return len(spans)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``s3regfs`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    setup_logging(debug="-d" in argv or "--debug" in argv)
    try:
        args = parse_argv(argv)
        if args.action == "help":
            print(help_text())
            return 0
        if args.action == "version":
            print(f"s3regfs {__version__}")
            return 0
        config = build_config(args)
    except QuietError as exc:
        print(f"s3regfs: error: {exc}", file=sys.stderr)
        return exc.exitcode
    hide_from_ps(SECRET_PARAMS)
    setup_logging(
        debug=config.debug,
        loglevel=config.driver.loglevel,
        secrets=_secrets(config),
        systemd=config.under_systemd,
    )
    if config.foreground:
        return _run_foreground(config)
    return _run_daemon(config)


def _run_foreground(config: Config) -> int:
    from s3regfs import mount

    try:
        return mount.run(config)
    except QuietError as exc:
        log.debug("startup failed", exc_info=True)
        print(f"s3regfs: error: {exc}", file=sys.stderr)
        return exc.exitcode
    except KeyboardInterrupt:
        return 130


def _run_daemon(config: Config) -> int:
    """Fork; the parent waits for the child's word on the mount (see module docstring)."""
    from s3regfs import mount

    # Paths are resolved before the child leaves the working directory.
    config = dataclasses.replace(config, mountpoint=os.path.abspath(config.mountpoint))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            word = pipe.read().decode("utf-8", "replace")
        if word.startswith("ok"):
            return 0
        if not word:
            _, status = os.waitpid(pid, 0)
            print("s3regfs: error: the file system process ended before mounting", file=sys.stderr)
            status = os.waitstatus_to_exitcode(status)
            return 128 - status if status < 0 else (status or 1)
        code, _, message = word.partition(" ")
        print(f"s3regfs: error: {message}", file=sys.stderr)
        os.waitpid(pid, 0)
        return int(code) if code.isdigit() else 1

    # The child: a new session, so the mount outlives the caller's terminal, and
    # the root as working directory, so it keeps no directory of the caller busy.
    os.close(read_end)
    os.setsid()
    os.chdir("/")
    reported = False

    def report(text: str) -> None:
        nonlocal reported
        if not reported:
            reported = True
            try:
                os.write(write_end, text.encode("utf-8"))
                os.close(write_end)
            except OSError:
                pass  # the caller is gone; the mount stays

    def ready() -> None:
        report("ok")
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        detach_to_syslog(_secrets(config))

    status = 1
    try:
        status = mount.run(config, on_ready=ready)
    except QuietError as exc:
        report(f"{exc.exitcode} {exc}")
        status = exc.exitcode
    except BaseException as exc:  # noqa: BLE001 - the parent must hear of it
        log.exception("the file system failed")
        report(f"1 {type(exc).__name__}: {exc}")
    finally:
        report(f"1 the file system stopped before it was ready (exit {status})")
        os._exit(status)
    return status  # not reached


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "parse_argv", "EXIT_CONFIG"]
