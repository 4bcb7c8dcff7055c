# SPDX-License-Identifier: MIT
"""One validated, frozen configuration, built in one place.

The S3 parameters have the names, defaults and validation of the registry's
S3 storage drivers (CNCF Distribution's ``s3``/``s3aws`` and GitLab's ``s3``/
``s3_v2``); the file-system options are s3regfs's own.  :func:`build` merges
the sources in this order, lowest precedence first:

1. the defaults;
2. the registry's config.yml (``storage.s3``, ``storage.s3aws`` or
   ``storage.s3_v2``), or a file holding just the S3 parameters plus an
   optional ``s3regfs:`` section of mount options;
3. ``REGISTRY_STORAGE_<DRIVER>_<PARAM>`` environment variables, YAML-decoded
   as the registry decodes them;
4. the SOURCE argument ``BUCKET[:/ROOTDIRECTORY]``;
5. ``-o`` options.

Nothing else in s3regfs reads the environment or argv.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from s3regfs.errors import ConfigError
from s3regfs.options import (
    DRIVER,
    DRIVER_OPTIONS,
    FS,
    GiB,
    KiB,
    MiB,
    bool_default,
    float_default,
    int_default,
    str_default,
)

log = logging.getLogger(__name__)


STORAGE_CLASSES = (
    "NONE",
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "OUTPOSTS",
    "GLACIER_IR",
    "EXPRESS_ONEZONE",
)
CANNED_ACLS = (
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
)
CHECKSUM_ALGORITHMS = ("CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME")

#: The drivers' loglevel values (Distribution's names and GitLab's ``log…``
#: names), mapped to the flags s3regfs understands.
LOGLEVEL_FLAGS = {
    "debug": "debug",
    "debugwithsigning": "signing",
    "debugwithhttpbody": "httpbody",
    "debugwithrequestretries": "retries",
    "debugwithrequesterrors": "requesterrors",
    "debugwitheventstreambody": "eventstreambody",
}

#: The registry's upload-purging age when config.yml sets none (168h).
UPLOAD_PURGE_AGE = 168 * 3600.0

#: Storage driver names whose parameters s3regfs takes (config.yml keys).
S3_DRIVER_NAMES = ("s3", "s3aws", "s3_v2")
#: Keys beside the driver in ``storage:`` that the registry defines.
STORAGE_SECTION_EXTRAS = ("maintenance", "cache", "delete", "redirect", "tag")

SECRET_PARAMS = frozenset({"accesskey", "secretkey", "sessiontoken"})

#: Every driver parameter s3regfs takes (declared in options.py).
DRIVER_PARAM_NAMES = tuple(DRIVER)
#: Every file-system option (declared in options.py).
FS_OPTION_NAMES = tuple(FS)

#: Options that mount(8), mount.fuse3 or fstab pass and that mean nothing here.
IGNORED_MOUNT_OPTIONS = frozenset(
    {
        "_netdev",
        "nofail",
        "auto",
        "noauto",
        "user",
        "users",
        "defaults",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "atime",
        "noatime",
        "relatime",
        "strictatime",
        "nodiratime",
        "lazytime",
    }
)

_INT_RE = re.compile(r"^[+-]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|[0-9]+)$")
_SIZE_RE = re.compile(r"^([0-9]+)([kKmMgG]?)(i?[bB])?$")
_BOOL_STRINGS = {
    "1": True,
    "t": True,
    "T": True,
    "TRUE": True,
    "true": True,
    "True": True,
    "0": False,
    "f": False,
    "F": False,
    "FALSE": False,
    "false": False,
    "False": False,
}


# ---------------------------------------------------------------------------
# Value parsing, as the drivers parse (docs/configuration.md says how)

#: What YAML parsing can raise on bad input besides YAMLError: a timestamp
#: that is no date (``2001-02-30``: ValueError), nesting deeper than Python's
#: stack (RecursionError).
_YAML_FAILURES = (yaml.YAMLError, ValueError, RecursionError)


def _shown(text: str) -> str:
    """*text* as an error message may show it: quoted when it holds a newline
    or another unprintable character, so every message stays one line."""
    return text if text.isprintable() else repr(text)


def parse_bool(name: str, value: Any) -> bool:
    """A YAML bool, or a string Go's strconv.ParseBool accepts."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in _BOOL_STRINGS:
        return _BOOL_STRINGS[value]
    raise ConfigError(f"the {name} parameter should be a boolean, {value!r} invalid")


def parse_int(name: str, value: Any, lo: int, hi: int) -> int:
    """A YAML int or a numeric string (0x/0o/0b prefixes as GitLab), in [lo, hi]."""
    number: int
    if isinstance(value, bool):
        raise ConfigError(f"{name} parameter must be an integer, {value!r} invalid")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INT_RE.match(value.strip()):
        text = value.strip()
        try:
            number = int(text, 0)
        except ValueError:  # "010": Python's base 0 refuses leading zeros
            try:
                number = int(text, 10)
            except ValueError:  # over Python's 4,300 decimal digits: far out of any range
                raise ConfigError(
                    f"the {name} parameter should be a number between {lo} and {hi} (inclusive), "
                    f"a {len(text)}-character number invalid"
                ) from None
    else:
        raise ConfigError(f"{name} parameter must be an integer, {value!r} invalid")
    if not lo <= number <= hi:
        raise ConfigError(
            f"the {name} {number} parameter should be a number between {lo} and {hi} (inclusive)"
        )
    return number


def parse_str(value: Any) -> str:
    """Go's fmt.Sprint of a YAML scalar: numbers as decimals, bools as true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_size(name: str, value: Any) -> int:
    """A byte count for s3regfs's own options: ``1048576``, ``64M``, ``1GiB``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE_RE.match(parse_str(value).strip())
    if not match:
        raise ConfigError(f"the {name} option takes a size in bytes such as 64M, {value!r} invalid")
    scale = {"": 1, "k": KiB, "m": MiB, "g": GiB}[match.group(2).lower()]
    if len(match.group(1)) > 30:  # int() refuses 4,300 digits; no size needs 30
        raise ConfigError(
            f"the {name} option takes a size in bytes such as 64M, a {len(match.group(1))}-digit size invalid"
        )
    return int(match.group(1)) * scale


def parse_seconds(name: str, value: Any) -> float:
    try:
        seconds = float(parse_str(value))
    except ValueError:
        raise ConfigError(f"the {name} option takes a number of seconds, {value!r} invalid") from None
    if seconds < 0 or not math.isfinite(seconds):  # inf would overflow socket timeouts
        raise ConfigError(f"the {name} option takes a finite number of seconds >= 0, {value!r} invalid")
    return seconds


def parse_loglevel(value: Any) -> frozenset[str]:
    """Distribution's single value or GitLab's comma-separated list.

    ``off``/``logoff`` (or YAML false) wins over the rest; an unknown value is
    ignored with a warning (GitLab's behaviour; Distribution ignores it silently).
    """
    if value is None or value is False:
        return frozenset()
    flags: set[str] = set()
    for raw in parse_str(value).split(","):
        word = raw.strip().lower()
        if not word:
            continue
        if word.startswith("log"):
            word = word[3:]
        if word == "off":
            return frozenset()
        if word in LOGLEVEL_FLAGS:
            flags.add(LOGLEVEL_FLAGS[word])
        else:
            log.warning("ignoring unknown loglevel value %r", raw.strip())
    return frozenset(flags)


def normalize_root(rootdirectory: str) -> str:
    """The key prefix of the driver's path "/": ``TrimRight(root, "/")`` with
    leading slashes trimmed, plus "/" unless empty, as the drivers map keys."""
    trimmed = rootdirectory.rstrip("/").lstrip("/")
    return trimmed + "/" if trimmed else ""


# ---------------------------------------------------------------------------
# The frozen result


@dataclass(frozen=True)
class DriverParams:
    """The registry driver's parameters, validated (defaults as the drivers)."""

    bucket: str
    region: str = str_default("region")
    regionendpoint: str = str_default("regionendpoint")
    accesskey: str = field(default=str_default("accesskey"), repr=False)
    secretkey: str = field(default=str_default("secretkey"), repr=False)
    sessiontoken: str = field(default=str_default("sessiontoken"), repr=False)
    #: forcepathstyle / pathstyle (their default: on with a regionendpoint).
    pathstyle: bool = False
    encrypt: bool = bool_default("encrypt")
    keyid: str = str_default("keyid")
    secure: bool = bool_default("secure")
    skipverify: bool = bool_default("skipverify")
    v4auth: bool = bool_default("v4auth")
    chunksize: int = int_default("chunksize")
    multipartcopychunksize: int = int_default("multipartcopychunksize")
    multipartcopymaxconcurrency: int = int_default("multipartcopymaxconcurrency")
    multipartcopythresholdsize: int = int_default("multipartcopythresholdsize")
    rootdirectory: str = str_default("rootdirectory")
    storageclass: str = str_default("storageclass")
    useragent: str = str_default("useragent")
    usedualstack: bool = bool_default("usedualstack")
    accelerate: bool = bool_default("accelerate")
    usefipsendpoint: bool = bool_default("usefipsendpoint")
    objectacl: str = str_default("objectacl")
    objectownership: bool = bool_default("objectownership")
    loglevel: frozenset[str] = frozenset()
    maxrequestspersecond: int = int_default("maxrequestspersecond")
    maxretries: int = int_default("maxretries")
    parallelwalk: bool = bool_default("parallelwalk")
    checksum_disabled: bool = bool_default("checksum_disabled")
    checksum_algorithm: str = str_default("checksum_algorithm")
    redirectendpoint: str = str_default("redirectendpoint")

    @property
    def key_prefix(self) -> str:
        """The prefix of every key under the root ("" or "a/b/")."""
        return normalize_root(self.rootdirectory)

    @property
    def endpoint_url(self) -> str | None:
        """regionendpoint with a scheme (added from *secure* when missing)."""
        if not self.regionendpoint:
            return None
        if "://" in self.regionendpoint:
            return self.regionendpoint
        return ("https://" if self.secure else "http://") + self.regionendpoint

    @property
    def endpoint_name(self) -> str:
        """How to name the endpoint in messages."""
        return self.endpoint_url or f"Amazon S3 ({self.region or 'default region'})"


@dataclass(frozen=True)
class MountOptions:
    """s3regfs's own file-system options."""

    ro: bool = bool_default("ro")
    allow_other: bool = bool_default("allow_other")
    default_permissions: bool = bool_default("default_permissions")
    uid: int = 0
    gid: int = 0
    umask: int = int_default("umask")
    metadata_ttl: float = float_default("metadata_ttl")
    metadata_cache: int = int_default("metadata_cache")
    dircache: bool = bool_default("dircache")
    list_ahead: bool = bool_default("list_ahead")
    busy_poll: int = int_default("busy_poll")
    connect_timeout: float = float_default("connect_timeout")
    read_timeout: float = float_default("read_timeout")
    fsname: str = str_default("fsname")
    subtype: str = str_default("subtype")
    readahead: int = int_default("readahead")
    readahead_total: int = int_default("readahead_total")
    read_ranges: int = int_default("read_ranges")
    max_connections: int = int_default("max_connections")
    spooldir: str = str_default("spooldir")
    spoolmax: int = int_default("spoolmax")
    write_memory: int = int_default("write_memory")
    parts_in_flight: int = int_default("parts_in_flight")
    commit_timeout: float = float_default("commit_timeout")
    verify: bool = bool_default("verify")
    images: bool = bool_default("images")
    views: bool = bool_default("views")
    #: The manifest cache's directory ("" for memory only).
    cachedir: str = str_default("cachedir")
    #: -o cache: the blob cache's directory ("" for none), and its size (0: 10% of its disk).
    cache: str = str_default("cache")
    cache_size: int = int_default("cache_size")
    statfs: str = str_default("statfs")
    statedir: str = str_default("statedir")
    abort_stale_uploads: bool = bool_default("abort_stale_uploads")
    #: (host, port) of -o metrics, or None.
    metrics: tuple[str, int] | None = None


@dataclass(frozen=True)
class Config:
    """Everything a mount needs, validated."""

    driver: DriverParams
    options: MountOptions
    mountpoint: str = ""
    foreground: bool = False
    debug: bool = False
    config_file: str = ""
    #: GitLab's metadata database is enabled in the registry's config.yml.
    database_enabled: bool = False
    #: Seconds after which the registry purges an upload
    #: (storage.maintenance.uploadpurging.age; the registry's default 168h).
    upload_purge_age: float = UPLOAD_PURGE_AGE
    #: The registry's cloudfront storage middleware, when configured (and not -o cloudfront=false).
    cloudfront: CloudFrontParams | None = None
    #: systemd's $NOTIFY_SOCKET (Type=notify), "" outside systemd.
    notify_socket: str = ""
    #: Started by systemd (stderr goes to the journal).
    under_systemd: bool = False


# ---------------------------------------------------------------------------
# Sources


def split_mount_options(text: str) -> list[tuple[str, str | None]]:
    """Split ``a=1,b,c=x\\,y`` into ``[("a","1"), ("b",None), ("c","x,y")]``.

    A comma inside a value is written ``\\,`` (libfuse's escape); ``\\\\``
    stands for a backslash.
    """
    result: list[tuple[str, str | None]] = []
    for start, end in mount_option_spans(text):
        item = _unescape(text[start:end])
        if not item:
            continue
        key, sep, value = item.partition("=")
        result.append((key.strip(), value if sep else None))
    return result


def mount_option_spans(text: str) -> list[tuple[int, int]]:
    """Where the items of an option list are in *text*, escapes still in
    them: (start, end) of each, split at every comma no backslash escapes (a
    backslash takes the character after it, whatever it is)."""
    spans: list[tuple[int, int]] = []
    start = position = 0
    while position < len(text):
        if text[position] == "\\":
            position += 2
            continue
        if text[position] == ",":
            spans.append((start, position))
            start = position + 1
        position += 1
    spans.append((start, len(text)))
    return spans


def _unescape(raw: str) -> str:
    """An item of an option list as meant: ``\\,`` is a comma, ``\\\\`` a
    backslash; any other backslash stays."""
    out: list[str] = []
    chars = iter(raw)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append(following if following in (",", "\\") else "\\" + following)
        else:
            out.append(char)
    return "".join(out)


def parse_source(source: str) -> tuple[str, str | None]:
    """``BUCKET[:/ROOTDIRECTORY]`` -> (bucket, rootdirectory or None)."""
    bucket, sep, root = source.partition(":")
    if not bucket:
        raise ConfigError(f"source {source!r}: expected BUCKET or BUCKET:/ROOTDIRECTORY")
    return bucket, (root if sep else None)


@dataclass
class FileSettings:
    """What a configuration file contributes."""

    driver_name: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    database_enabled: bool = False
    upload_purge_age: float = UPLOAD_PURGE_AGE
    #: The options of the ``middleware.storage`` entry named cloudfront, if any.
    cloudfront: dict[str, Any] | None = None


def read_config_file(path: str) -> FileSettings:
    """Read the registry's config.yml (or a file of bare S3 parameters)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except _YAML_FAILURES as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path}: not valid YAML{where}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    settings = FileSettings()
    if _holds_secret(document) and os.stat(path).st_mode & 0o004:
        log.warning("config file %s holds credentials and is readable by every user: chmod 600 it", path)
    own = document.get("s3regfs")
    if own is not None:
        if not isinstance(own, dict):
            raise ConfigError(f"config file {path}: the s3regfs section must be a mapping")
        settings.options = {str(k): v for k, v in own.items()}
    database = document.get("database")
    if isinstance(database, dict):
        enabled = database.get("enabled")
        settings.database_enabled = enabled is True or parse_str(enabled).lower() in (
            "true",
            "prefer",
        )
    settings.cloudfront = _storage_middleware(document.get("middleware"), path)
    storage = document.get("storage")
    maintenance = storage.get("maintenance") if isinstance(storage, dict) else None
    purging = maintenance.get("uploadpurging") if isinstance(maintenance, dict) else None
    if isinstance(purging, dict) and purging.get("age") is not None:
        try:
            settings.upload_purge_age = parse_go_duration(parse_str(purging["age"]))
        except ValueError as exc:
            raise ConfigError(f"config file {path}: storage.maintenance.uploadpurging.age: {exc}") from None
    if storage is None:
        if "bucket" in document or "regionendpoint" in document or "region" in document:
            # A file of bare S3 parameters (the systemd unit's /etc/s3regfs/NAME.yml).
            settings.params = {str(k): v for k, v in document.items() if k != "s3regfs"}
            settings.driver_name = "s3"
            return settings
        if own is not None:
            return settings
        raise ConfigError(f"config file {path}: no storage section")
    if isinstance(storage, str):
        storage = {storage: {}}
    if not isinstance(storage, dict):
        raise ConfigError(f"config file {path}: the storage section must be a mapping")
    drivers = [str(k) for k in storage if str(k) not in STORAGE_SECTION_EXTRAS]
    if len(drivers) != 1:
        raise ConfigError(f"config file {path}: must provide exactly one storage type. Provided: {drivers}")
    name = drivers[0]
    if name not in S3_DRIVER_NAMES:
        raise ConfigError(
            f"config file {path}: storage driver {name!r} is not an S3 driver "
            f"(expected one of {', '.join(S3_DRIVER_NAMES)})"
        )
    params = storage[name] or {}
    if not isinstance(params, dict):
        raise ConfigError(f"config file {path}: storage.{name} must be a mapping")
    settings.driver_name = name
    settings.params = {str(k): v for k, v in params.items()}
    return settings


def _storage_middleware(section: Any, path: str) -> dict[str, Any] | None:
    """The options of the first enabled ``middleware.storage`` entry named
    cloudfront (``{}`` when it has none); other storage middlewares only
    change the URLs the registry hands to clients, so they are left out,
    with a warning."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: the middleware section must be a mapping")
    entries = section.get("storage")
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise ConfigError(f"config file {path}: middleware.storage must be a list")
    found: dict[str, Any] | None = None
    for entry in entries:
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"config file {path}: each middleware.storage entry needs a name")
        name = parse_str(entry["name"])
        if entry.get("disabled") is True or parse_str(entry.get("disabled")).lower() == "true":
            continue
        if name != "cloudfront":
            log.warning("config file %s: storage middleware %r ignored (s3regfs reads from S3)", path, name)
            continue
        if found is not None:
            log.warning("config file %s: a second cloudfront storage middleware ignored", path)
            continue
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"config file {path}: the cloudfront middleware's options must be a mapping")
        found = {str(k): v for k, v in options.items()}  # names are case-sensitive, as in Go
    return found


# ---------------------------------------------------------------------------
# The cloudfront storage middleware's options (read as the registry reads them)

#: Where AWS publishes its address ranges (the middleware's default).
DEFAULT_IP_RANGES_URL = "https://ip-ranges.amazonaws.com/ip-ranges.json"
CLOUDFRONT_DURATION = 20 * 60.0
IP_RANGES_UPDATE_FREQUENCY = 12 * 3600.0
IP_FILTERS = ("none", "aws", "awsregion")
#: The middleware's option names; each is also ``-o cloudfront_<name>``.
CLOUDFRONT_OPTIONS = (
    "baseurl",
    "privatekey",
    "keypairid",
    "duration",
    "ipfilteredby",
    "awsregion",
    "updatefrequency",
    "iprangesurl",
)


@dataclass(frozen=True)
class CloudFrontParams:
    """The cloudfront storage middleware's options, validated; the private
    key already loaded (PEM, PKCS#1)."""

    baseurl: str
    privatekey: str
    keypairid: str
    #: The private key's PEM bytes.
    key_pem: bytes = field(repr=False, default=b"")
    duration: float = CLOUDFRONT_DURATION
    ipfilteredby: str = "none"
    awsregions: tuple[str, ...] = ()
    updatefrequency: float = IP_RANGES_UPDATE_FREQUENCY
    iprangesurl: str = DEFAULT_IP_RANGES_URL
    #: From the environment, as boto3 reads it: (scheme, proxy URL) pairs of
    #: HTTP(S)_PROXY, NO_PROXY, AWS_CA_BUNDLE.
    proxies: tuple[tuple[str, str], ...] = ()
    no_proxy: str = ""
    ca_bundle: str = ""


def _cloudfront_duration(name: str, value: Any, default: float) -> float:
    """A middleware duration: a Go duration string; any other YAML type is
    ignored, as the middleware ignores it (with a warning here)."""
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        log.warning(
            'cloudfront %s %r ignored, as the registry ignores it: write a duration string such as "%ss"',
            name,
            value,
            value,
        )
        return default
    text = value
    try:
        seconds = parse_go_duration(text)
    except ValueError:
        raise ConfigError(
            f"the cloudfront {name} option takes a Go duration such as 20m, {text!r} invalid"
        ) from None
    if seconds <= 0:
        raise ConfigError(f"the cloudfront {name} option must be a positive duration, {text!r} invalid")
    return seconds


def load_cloudfront_key(path: str) -> bytes:
    """The PEM bytes of the private key at *path*, checked to be what the
    middleware takes: the file's first PEM block, an unencrypted PKCS#1 RSA
    private key (``BEGIN RSA PRIVATE KEY``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        data = Path(path).read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"the cloudfront privatekey option: cannot read {_shown(path)}: {reason}") from None
    match = re.search(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", data, re.S)
    if match is None:
        raise ConfigError(f"the cloudfront privatekey option: {_shown(path)} holds no PEM block")
    if match.group(1) != b"RSA PRIVATE KEY" or b"Proc-Type" in match.group(0):
        raise ConfigError(
            f"the cloudfront privatekey option: {_shown(path)} is not an unencrypted PKCS#1 RSA key "
            f"(BEGIN RSA PRIVATE KEY; it holds {match.group(1).decode(errors='replace')}); "
            "convert it with: openssl rsa -traditional -in KEY -out KEY.pem"
        )
    try:
        key = serialization.load_pem_private_key(match.group(0), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"the cloudfront privatekey option: {_shown(path)} is not a valid RSA key: {exc}"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"the cloudfront privatekey option: {_shown(path)} is not an RSA key")
    return match.group(0)


def build_cloudfront(options: Mapping[str, Any]) -> CloudFrontParams:
    """Validate the middleware's *options* as its constructor does (baseurl,
    privatekey and keypairid required, durations in Go's syntax, ipfilteredby
    one of none|aws|awsregion, awsregion required by awsregion)."""
    values = dict(options)
    if "updatefrenquency" in values:
        # The middleware's old misspelling, still read (with the same warning).
        log.warning("cloudfront updatefrenquency is deprecated: use updatefrequency")
        values["updatefrequency"] = values.pop("updatefrenquency")  # it wins, as in the middleware
    unknown = sorted(set(values) - set(CLOUDFRONT_OPTIONS))
    if unknown:
        log.warning(
            "cloudfront middleware options ignored (unknown to the middleware): %s", ", ".join(unknown)
        )
    for required in ("baseurl", "privatekey", "keypairid"):
        if values.get(required) in (None, ""):
            raise ConfigError(
                f"the cloudfront {required} option is missing (middleware.storage cloudfront options, "
                f"or -o cloudfront_{required})"
            )
    baseurl = parse_str(values["baseurl"]).strip()
    if "://" not in baseurl:
        baseurl = "https://" + baseurl
    if not baseurl.endswith("/"):
        baseurl += "/"
    scheme, _, rest = baseurl.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0] or not baseurl.isprintable():
        raise ConfigError(f"the cloudfront baseurl option is not an http(s) URL: {_shown(baseurl)}")
    privatekey = parse_str(values["privatekey"])
    key_pem = load_cloudfront_key(privatekey)
    raw_filter = values.get("ipfilteredby", "")
    ipfilteredby = (raw_filter.strip().lower() or "none") if isinstance(raw_filter, str) else ""
    if ipfilteredby not in IP_FILTERS:  # also a value that is not a string, as in the middleware
        raise ConfigError(
            f"the cloudfront ipfilteredby option takes none, aws or awsregion, {values['ipfilteredby']!r} invalid"
        )
    regions: tuple[str, ...] = ()
    if ipfilteredby == "awsregion":
        if values.get("awsregion") is None:
            raise ConfigError("the cloudfront awsregion option is missing (ipfilteredby is awsregion)")
        if not isinstance(values["awsregion"], str):
            raise ConfigError(
                "the cloudfront awsregion option must be a comma-separated string of AWS regions"
            )
        regions = tuple(region.strip().lower() for region in values["awsregion"].split(","))
    return CloudFrontParams(
        baseurl=baseurl,
        privatekey=privatekey,
        keypairid=parse_str(values["keypairid"]),
        key_pem=key_pem,
        duration=_cloudfront_duration("duration", values.get("duration"), CLOUDFRONT_DURATION),
        ipfilteredby=ipfilteredby,
        awsregions=regions,
        updatefrequency=_cloudfront_duration(
            "updatefrequency", values.get("updatefrequency"), IP_RANGES_UPDATE_FREQUENCY
        ),
        iprangesurl=parse_str(values.get("iprangesurl")) or DEFAULT_IP_RANGES_URL,
    )


_GO_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string ("168h", "1h30m", "90s"), as Go's
    time.ParseDuration reads it (a sign, then number-unit pairs; "0" alone)."""
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-")
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    seconds = 0.0
    position = 0
    for match in _GO_DURATION_PART.finditer(body):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(body):
        raise ValueError(f"invalid duration {text!r}")
    return sign * seconds


def _holds_secret(document: Any) -> bool:
    """Whether a parsed YAML document has a non-empty secretkey or sessiontoken anywhere."""
    if isinstance(document, dict):
        return any(
            (key in ("secretkey", "sessiontoken") and bool(value)) or _holds_secret(value)
            for key, value in document.items()
        )
    return False


def environment_overrides(environ: Mapping[str, str], driver_name: str) -> tuple[str, dict[str, Any]]:
    """``REGISTRY_STORAGE_<DRIVER>_<PARAM>`` values, YAML-decoded as the registry does.

    GitLab's splitting keeps ``S3_V2`` and parameter names such as
    ``CHECKSUM_DISABLED`` whole; so does this.  Returns the driver name the
    variables use (``driver_name`` if they name none) and the parameters.
    """
    found: dict[str, dict[str, Any]] = {}
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("REGISTRY_STORAGE_"):
            continue
        rest = upper[len("REGISTRY_STORAGE_") :]
        for driver in sorted(S3_DRIVER_NAMES, key=len, reverse=True):
            token = driver.upper() + "_"
            if rest.startswith(token) and len(rest) > len(token):
                param = rest[len(token) :].lower()
                try:
                    value = yaml.safe_load(environ[name])
                except _YAML_FAILURES:
                    value = environ[name]
                found.setdefault(driver, {})[param] = value
                break
    if not found:
        return driver_name, {}
    if len(found) > 1 or (driver_name and driver_name not in found):
        names = sorted(set(found) | ({driver_name} if driver_name else set()))
        raise ConfigError(
            f"REGISTRY_STORAGE_* environment: must provide exactly one storage type. Provided: {names}"
        )
    ((name, params),) = found.items()
    return name, params


def _check_known(params: Mapping[str, Any], origin: str) -> dict[str, Any]:
    known: dict[str, Any] = {}
    for key, value in params.items():
        if key in DRIVER_PARAM_NAMES:
            known[key] = value
        else:
            log.warning("%s: ignoring unknown S3 parameter %r", origin, key)
    return known


def build_driver(raw: Mapping[str, Any]) -> DriverParams:
    """Validate merged raw parameter values as the drivers do."""
    p = dict(raw)
    values: dict[str, Any] = {}
    # The generic kinds, as declared (options.py); the special ones below.
    for option in DRIVER_OPTIONS:
        given = p.get(option.name) not in (None, "")
        if option.kind == "str":
            values[option.name] = parse_str(p.get(option.name))
        elif option.kind == "bool":
            values[option.name] = parse_bool(option.name, p[option.name]) if given else option.default
        elif option.kind == "int":
            values[option.name] = (
                parse_int(option.name, p[option.name], option.lo, option.hi) if given else option.default
            )
    if bool(values["accesskey"]) != bool(values["secretkey"]):
        log.warning(
            "only one of accesskey and secretkey is set: both are ignored and credentials "
            "come from the default chain, as the registry does"
        )
    bucket = parse_str(p.get("bucket"))
    if not bucket:
        raise ConfigError("no bucket parameter provided")
    # S3's rules (with the legacy upper case and underscores that us-east-1
    # allowed): anything else could only fail at the first request, and a
    # comma or space would break the fsname shown in /proc/mounts.
    if not isinstance(p.get("bucket"), str | int) or not re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}", bucket
    ):
        raise ConfigError(f"the bucket parameter must be an S3 bucket name, {bucket!r} invalid")
    values["bucket"] = bucket
    endpoint = parse_str(p.get("regionendpoint"))
    values["regionendpoint"] = endpoint
    region = parse_str(p.get("region"))
    if not region and not endpoint:
        raise ConfigError("no region parameter provided (required unless regionendpoint is set)")
    # fullmatch: "$" would let a trailing newline through.
    if region and not re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", region):
        raise ConfigError(f"invalid region provided: {_shown(region)} (the region parameter)")
    values["region"] = region
    style: dict[str, bool] = {}
    for name in ("forcepathstyle", "pathstyle"):
        if p.get(name) not in (None, ""):
            style[name] = parse_bool(name, p[name])
    if len(set(style.values())) > 1:
        raise ConfigError("forcepathstyle and pathstyle disagree: set one of them")
    values["pathstyle"] = next(iter(style.values())) if style else bool(endpoint)
    if values["keyid"] and not values["encrypt"]:
        log.warning("keyid is ignored because encrypt is not true")
        values["keyid"] = ""
    if not values["v4auth"] and (not endpoint or "s3.amazonaws.com" in endpoint):
        raise ConfigError(
            "on Amazon S3 this storage driver can only be used with v4 authentication "
            "(v4auth=false needs a regionendpoint of an S3-compatible service)"
        )
    storageclass = p.get("storageclass")
    if storageclass in (None, ""):
        values["storageclass"] = DRIVER["storageclass"].default
    elif not isinstance(storageclass, str):
        raise ConfigError(f"the storageclass parameter must be a string: {storageclass!r}")
    elif storageclass.upper() not in STORAGE_CLASSES:
        raise ConfigError(
            f"the storageclass parameter must be one of {', '.join(STORAGE_CLASSES)}, "
            f"{storageclass!r} invalid"
        )
    else:
        values["storageclass"] = storageclass.upper()
    acl_given = p.get("objectacl") not in (None, "")
    acl = parse_str(p.get("objectacl")) if acl_given else DRIVER["objectacl"].default
    if acl not in CANNED_ACLS:
        raise ConfigError(f"invalid value for objectacl parameter: {acl!r} (one of {', '.join(CANNED_ACLS)})")
    if acl_given and values["objectownership"]:
        raise ConfigError("the objectacl parameter should not be set when objectownership is enabled")
    values["objectacl"] = acl
    values["loglevel"] = parse_loglevel(p.get("loglevel"))
    algorithm = parse_str(p.get("checksum_algorithm")).upper()
    if algorithm and algorithm not in CHECKSUM_ALGORITHMS:
        raise ConfigError(
            f"the checksum_algorithm parameter must be one of {', '.join(CHECKSUM_ALGORITHMS)}, "
            f"{algorithm!r} invalid"
        )
    values["checksum_algorithm"] = algorithm
    redirect = parse_str(p.get("redirectendpoint"))
    if redirect and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#\s]+/?", redirect):
        raise ConfigError(
            f"the redirectendpoint parameter must be a URL with a scheme and a host and "
            f"no path or query, {redirect!r} invalid"
        )
    values["redirectendpoint"] = redirect
    return DriverParams(**values)


def build_options(raw: Mapping[str, Any], *, source: str) -> MountOptions:
    """Validate s3regfs's own options (raw values are strings, None for bare flags)."""
    values: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid(), "fsname": source}
    for name, value in raw.items():
        option = FS.get(name)
        if option is None or name == "config":
            raise ConfigError(f"unknown option -o {_shown(name)}")
        if name.startswith("cloudfront"):
            continue  # build() hands these to build_cloudfront
        if name == "ro":
            values["ro"] = value is None or parse_bool(name, value)
        elif name == "rw":
            values["ro"] = not (value is None or parse_bool(name, value))
        elif option.kind == "flag":
            values[name] = value is None or parse_bool(name, value)
        elif option.kind == "int":
            values[name] = parse_int(name, value, option.lo, option.hi)
        elif option.kind == "seconds":
            values[name] = parse_seconds(name, value)
        elif option.kind == "size":
            values[name] = parse_size(name, value)
        elif name == "umask":
            text = parse_str(value)
            if not re.fullmatch(r"0?[0-7]{1,4}", text):
                raise ConfigError(f"the umask option takes an octal mask such as 022, {text!r} invalid")
            values["umask"] = int(text, 8) & 0o777
        elif name in ("fsname", "subtype"):
            text = parse_str(value)
            if not text or "," in text:
                raise ConfigError(f"the {name} option needs a value without commas")
            values[name] = text
        elif name == "statfs":
            text = parse_str(value)
            if text not in ("seen", "scan"):
                raise ConfigError(f"the statfs option takes seen or scan, {text!r} invalid")
            values[name] = text
        elif name == "metrics":
            text = parse_str(value)
            host, colon, port = text.rpartition(":")
            if not colon:
                host, port = "", text
            if not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
                raise ConfigError(f"the metrics option takes HOST:PORT or PORT, {text!r} invalid")
            values[name] = (host.strip("[]") or "127.0.0.1", int(port))
        elif name == "cache":
            text = parse_str(value)
            if not text:
                raise ConfigError("the cache option needs a directory")
            values[name] = os.path.abspath(text)
        elif name == "cachedir":
            text = parse_str(value)
            if not text:
                raise ConfigError("the cachedir option needs a directory, or none")
            values[name] = "" if text == "none" else os.path.abspath(text)
        elif name == "statedir":
            text = parse_str(value)
            if not text:
                raise ConfigError("the statedir option needs a directory")
            values[name] = os.path.abspath(text)
        elif name == "spooldir":
            text = parse_str(value)
            if not text or not os.path.isdir(text):
                raise ConfigError(f"the spooldir option needs an existing directory, {text!r} invalid")
            values[name] = os.path.abspath(text)
        else:
            raise AssertionError(f"option {name} is declared but not parsed")
    if values.get("readahead", MiB) < 128 * KiB:
        raise ConfigError("the readahead option must be at least 128K")
    if values.get("metadata_cache", MiB) < MiB:
        raise ConfigError("the metadata_cache option must be at least 1M")
    values.setdefault("statedir", default_statedir(os.environ))
    values.setdefault("cachedir", default_cachedir(os.environ))
    if values.pop("images", False):
        values["views"] = True  # the older name
    return MountOptions(**values)


def _cloudfront_of(from_file: Mapping[str, Any] | None, fs_opts: dict[str, Any]) -> CloudFrontParams | None:
    """The cloudfront middleware's options: the config file's entry, each
    overridden by ``-o cloudfront_<name>`` (popped from *fs_opts*); None when
    neither names one, or with ``-o cloudfront=false``."""
    overrides = {
        name.removeprefix("cloudfront_"): fs_opts.pop(name)
        for name in list(fs_opts)
        if name.startswith("cloudfront_")
    }
    if "cloudfront" in fs_opts:
        enabled = fs_opts.pop("cloudfront")  # None: bare -o cloudfront, on
        if enabled is not None and not parse_bool("cloudfront", enabled):
            return None
    if from_file is None and not overrides:
        return None
    merged = dict(from_file or {})
    merged.update({name: value for name, value in overrides.items() if value is not None})
    return build_cloudfront(merged)


def _http_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The proxy and CA settings of the environment that boto3 honours, for
    the requests s3regfs makes itself (CloudFront, ip-ranges.json)."""
    proxies = []
    for scheme in ("http", "https"):
        value = environ.get(f"{scheme}_proxy") or environ.get(f"{scheme.upper()}_PROXY")
        if value:
            proxies.append((scheme, value))
    return {
        "proxies": tuple(proxies),
        "no_proxy": environ.get("no_proxy") or environ.get("NO_PROXY") or "",
        "ca_bundle": environ.get("AWS_CA_BUNDLE", ""),
    }


def default_statedir(environ: Mapping[str, str]) -> str:
    """Where s3regfs keeps state (its upload journal) unless ``-o statedir`` says:
    systemd's ``$STATE_DIRECTORY``, /var/lib/s3regfs for root, else the XDG state home."""
    if environ.get("STATE_DIRECTORY"):
        return environ["STATE_DIRECTORY"].split(":")[0]
    if os.geteuid() == 0:
        return "/var/lib/s3regfs"
    state_home = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state_home, "s3regfs")


def default_cachedir(environ: Mapping[str, str]) -> str:
    """Where s3regfs keeps its caches unless ``-o cachedir`` says: systemd's
    ``$CACHE_DIRECTORY``, /var/cache/s3regfs for root, else the XDG cache home."""
    if environ.get("CACHE_DIRECTORY"):
        return environ["CACHE_DIRECTORY"].split(":")[0]
    if os.geteuid() == 0:
        return "/var/cache/s3regfs"
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "s3regfs")


def build(
    *,
    source: str | None,
    mountpoint: str,
    mount_options: Sequence[tuple[str, str | None]] = (),
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    foreground: bool = False,
    debug: bool = False,
) -> Config:
    """Merge every source (see the module docstring) into a validated Config.

    Raises ConfigError, naming the parameter, on the first invalid value.
    """
    environ = os.environ if environ is None else environ
    driver_opts: dict[str, Any] = {}
    fs_opts: dict[str, Any] = {}
    for key, value in mount_options:
        if key == "config":
            if not value:
                raise ConfigError("the config option needs a file name: -o config=FILE")
            config_file = value
        elif key in DRIVER_PARAM_NAMES:
            if key in SECRET_PARAMS and value:
                log.warning(
                    "-o %s on the command line is visible to every user in ps while s3regfs "
                    "starts (it then blanks it out); prefer the config file or the environment",
                    key,
                )
            driver_opts[key] = "true" if value is None else value
        elif key in IGNORED_MOUNT_OPTIONS or key.startswith("x-systemd.") or key.startswith("comment="):
            continue
        elif key in FS:
            fs_opts[key] = value
        else:
            raise ConfigError(f"unknown option -o {_shown(key)}")

    settings = read_config_file(config_file) if config_file else FileSettings()
    merged = _check_known(settings.params, f"config file {config_file}") if config_file else {}
    driver_name, env_params = environment_overrides(environ, settings.driver_name)
    merged.update(_check_known(env_params, f"REGISTRY_STORAGE_{driver_name.upper()}_*"))
    if source:
        bucket, root = parse_source(source)
        merged["bucket"] = bucket
        if root is not None:
            merged["rootdirectory"] = root
    merged.update(driver_opts)
    driver = build_driver(merged)

    file_fs_opts: dict[str, Any] = {}
    for key, value in settings.options.items():
        if key not in FS or key == "config":
            raise ConfigError(f"config file {config_file}: unknown s3regfs option {key!r}")
        file_fs_opts[key] = None if value is True else ("false" if value is False else value)
    file_fs_opts.update(fs_opts)
    cloudfront = _cloudfront_of(settings.cloudfront, file_fs_opts)
    if cloudfront is not None:
        cloudfront = dataclasses.replace(cloudfront, **_http_environment(environ))
    default_source = (
        f"{driver.bucket}:/{driver.key_prefix.rstrip('/')}" if driver.key_prefix else driver.bucket
    )
    options = build_options(file_fs_opts, source=source or default_source)
    return Config(
        driver=driver,
        options=options,
        mountpoint=mountpoint,
        foreground=foreground,
        debug=debug,
        config_file=config_file or "",
        database_enabled=settings.database_enabled,
        upload_purge_age=settings.upload_purge_age,
        cloudfront=cloudfront,
        notify_socket=environ.get("NOTIFY_SOCKET", ""),
        under_systemd=bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID")),
    )
