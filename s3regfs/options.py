# SPDX-License-Identifier: MIT
"""Every option, declared once.

A driver parameter (the registry's S3 driver's names, defaults and bounds) or a
file-system option of s3regfs is declared here as one :class:`Option`: its
name, how its value is parsed (*kind*), its default, its bounds, the default
as people read it, its help, and for a driver parameter which registries know
it.  Everything else derives from these declarations: the name lists, the
defaults of :class:`s3regfs.config.DriverParams` and
:class:`s3regfs.config.MountOptions`, the generic part of the validation,
``--help``, and the tables of docs/configuration.md (a test compares them;
``python -m s3regfs.options`` prints them).
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
INT64_MAX = 2**63 - 1

#: Which registries read a driver parameter.
BOTH = "Distribution, GitLab"
DISTRIBUTION = "Distribution"
GITLAB = "GitLab"
S3REGFS = "s3regfs only"


@dataclass(frozen=True)
class Option:
    """One option.

    *kind* says how a value is parsed: ``str``, ``bool`` (Go's ParseBool
    spellings), ``int`` (in [*lo*, *hi*]), ``size`` (``64M``), ``seconds``,
    ``flag`` (a file-system switch: bare means on), or ``special`` (checked
    by code of its own in config.py).  *shown* is the default as ``--help``
    and the docs show it; *doc* the docs table's last column (else *help*).
    """

    name: str
    kind: str
    default: object
    shown: str
    help: str
    lo: int = 0
    hi: int = 0
    known_by: str = BOTH
    doc: str = ""

    @property
    def doc_text(self) -> str:
        return self.doc or self.help


DRIVER_OPTIONS: tuple[Option, ...] = (
    Option(
        "accesskey", "str", "", "default credential chain", "static access key (used when both keys are set)"
    ),
    Option(
        "secretkey", "str", "", "default credential chain", "static secret key (used when both keys are set)"
    ),
    Option(
        "sessiontoken",
        "str",
        "",
        "none",
        "session token for the static keys",
        known_by="documented by both, read by neither",
    ),
    Option(
        "region",
        "special",
        "",
        "required unless regionendpoint is set",
        "the bucket's region; checked for shape",
        doc="checked for shape; with only an endpoint, `us-east-1` signs requests",
    ),
    Option(
        "regionendpoint",
        "special",
        "",
        "none",
        "an S3-compatible endpoint",
        doc="boto3 `endpoint_url`; a scheme is added from `secure` when missing",
    ),
    Option(
        "forcepathstyle",
        "special",
        None,
        "true when regionendpoint is set",
        "path-style addressing (Distribution's name)",
        known_by="Distribution 3",
        doc="path-style addressing; must agree with `pathstyle` when both are given",
    ),
    Option(
        "pathstyle",
        "special",
        None,
        "true when regionendpoint is set",
        "path-style addressing (GitLab's name)",
        known_by=GITLAB,
        doc="path-style addressing; must agree with `forcepathstyle` when both are given",
    ),
    Option("bucket", "special", "", "required", "the bucket (required)", doc="an S3 bucket name"),
    Option(
        "encrypt", "bool", False, "false", "server-side encryption of writes (AES256, or aws:kms with keyid)"
    ),
    Option(
        "keyid",
        "str",
        "",
        "none",
        "the KMS key of encrypt",
        doc="the KMS key id; without `encrypt` it is ignored with a warning",
    ),
    Option("secure", "bool", True, "true", "https (plain http when false and no endpoint is given)"),
    Option("skipverify", "bool", False, "false", "do not verify the endpoint's TLS certificate"),
    Option(
        "v4auth",
        "bool",
        True,
        "true",
        "SigV4 (false selects SigV2; refused on Amazon S3 itself)",
    ),
    Option(
        "chunksize",
        "int",
        10 * MiB,
        "10 MiB",
        "size of each part of a multipart upload",
        lo=5 * MiB,
        hi=5 * GiB,
        doc="5 MiB .. 5 GiB (GitLab: at most 2.5 GiB)",
    ),
    Option(
        "multipartcopychunksize",
        "int",
        32 * MiB,
        "32 MiB",
        "size of each part of a multipart copy",
        lo=5 * MiB,
        hi=5 * GiB,
        doc="5 MiB .. 5 GiB",
    ),
    Option(
        "multipartcopymaxconcurrency",
        "int",
        100,
        "100",
        "parts of one copy at once, and objects of a directory rename at once",
        lo=1,
        hi=INT64_MAX,
        doc=">= 1; also the objects a directory rename copies at once (at most half of `max_connections`)",
    ),
    Option(
        "multipartcopythresholdsize",
        "int",
        32 * MiB,
        "32 MiB",
        "objects larger than this are copied in parts",
        lo=0,
        hi=5 * GiB,
        doc="0 .. 5 GiB",
    ),
    Option(
        "rootdirectory",
        "str",
        "",
        '""',
        "the key prefix the mount root stands for",
        doc='key = rootdirectory stripped of slashes + "/" + path (`""`, `/` → bucket root)',
    ),
    Option(
        "storageclass",
        "special",
        "STANDARD",
        "STANDARD",
        "storage class of written objects (NONE: no header)",
        doc="NONE, STANDARD, REDUCED_REDUNDANCY, STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, "
        "OUTPOSTS, GLACIER_IR, EXPRESS_ONEZONE (case-insensitive)",
    ),
    Option(
        "objectacl",
        "special",
        "private",
        "private",
        "canned ACL of written objects",
        doc="canned ACLs only; not together with `objectownership=true`",
    ),
    Option(
        "objectownership",
        "bool",
        False,
        "false",
        "bucket-owner-enforced ownership: no ACL header",
        known_by=GITLAB,
    ),
    Option("useragent", "str", "", "none", "appended to the user agent", known_by=DISTRIBUTION),
    Option("usedualstack", "bool", False, "false", "boto3's dual-stack endpoint", known_by=DISTRIBUTION),
    Option(
        "accelerate", "bool", False, "false", "boto3's transfer-acceleration endpoint", known_by=DISTRIBUTION
    ),
    Option("usefipsendpoint", "bool", False, "false", "boto3's FIPS endpoint", known_by=DISTRIBUTION),
    Option(
        "loglevel",
        "special",
        frozenset(),
        "off",
        "S3 request logging",
        doc="Distribution's values or GitLab's comma-separated `log…` names, mapped onto botocore's loggers",
    ),
    Option(
        "maxrequestspersecond",
        "int",
        350,
        "350",
        "requests per second (token bucket, burst 1; 0: no limit)",
        lo=0,
        hi=INT64_MAX,
        known_by=GITLAB,
    ),
    Option(
        "maxretries",
        "int",
        5,
        "5",
        "retries of a failed request (at most 1 + maxretries attempts)",
        lo=0,
        hi=INT64_MAX,
        known_by=GITLAB,
    ),
    Option(
        "parallelwalk",
        "bool",
        False,
        "false",
        "accepted; s3regfs's listings are already batched",
        known_by=GITLAB,
    ),
    Option(
        "checksum_disabled",
        "bool",
        False,
        "false",
        "no request checksums",
        known_by="GitLab (s3_v2)",
        doc="boto3 checksums are `when_required` unless an algorithm is asked for",
    ),
    Option(
        "checksum_algorithm",
        "special",
        "",
        "none",
        "request checksum algorithm (CRC32, CRC32C, SHA1, SHA256, CRC64NVME)",
        known_by="GitLab (s3_v2)",
        doc="CRC32, CRC32C, SHA1, SHA256, CRC64NVME; none means boto3's `when_required`",
    ),
    Option(
        "redirectendpoint",
        "special",
        "",
        "none",
        "validated (scheme and host only) and unused: s3regfs does not presign",
        known_by="Distribution (unreleased)",
    ),
)

FS_OPTIONS: tuple[Option, ...] = (
    Option("ro", "flag", False, "off", "mount read-only"),
    Option("rw", "flag", True, "on", "mount read-write"),
    Option(
        "allow_other",
        "flag",
        False,
        "off",
        "let other users see the mount (needs user_allow_other for non-root)",
    ),
    Option("default_permissions", "flag", True, "on", "let the kernel check permissions from the mode bits"),
    Option("uid", "int", None, "mounting user", "owner of every file", lo=0, hi=2**32 - 2),
    Option("gid", "int", None, "mounting group", "group of every file", lo=0, hi=2**32 - 2),
    Option("umask", "special", 0o022, "022", "octal mask applied to 0777 (directories) and 0666 (files)"),
    Option(
        "metadata_ttl",
        "seconds",
        60.0,
        "60",
        "seconds a listing or attribute stays fresh, from when it was asked for: keep it well above the time a listing takes, or a walk lists again at every step",
    ),
    Option(
        "metadata_cache",
        "size",
        128 * MiB,
        "128M",
        "memory for names and attributes; past it the coldest directories are forgotten (listed again when visited)",
    ),
    Option(
        "dircache",
        "flag",
        True,
        "on",
        "directories read without OPENDIR, their contents cached by the kernel (checked after metadata_ttl)",
        doc="directories read without OPENDIR and their contents cached by the kernel, checked again "
        "after `metadata_ttl` (needs the pyfuse3 that scripts/install.sh builds and Linux 5.1; "
        "see docs/design.md)",
    ),
    Option(
        "list_ahead",
        "flag",
        True,
        "on",
        "list the next unlisted directory a walk needs in the background while it reads one",
        doc="while a walk (find, du, rsync) reads a directory that needed a listing, list the next "
        "unlisted directory it will need in the background, so that the walk finds it listed; costs "
        "at most two listings per directory listed for a reader (see docs/design.md)",
    ),
    Option(
        "busy_poll",
        "int",
        50,
        "50",
        "microseconds the request loop polls for the next request before it sleeps (0: never)",
        lo=0,
        hi=10_000,
        doc="microseconds the request loop polls for the next FUSE request after answering one, "
        "before it sleeps; a walk's next request comes sooner than a sleeping thread wakes "
        "(0: never poll; needs the pyfuse3 that scripts/install.sh builds; see docs/design.md)",
    ),
    Option("connect_timeout", "seconds", 10.0, "10", "seconds to wait for a connection, per attempt"),
    Option("read_timeout", "seconds", 60.0, "60", "seconds to wait for data on a connection, per attempt"),
    Option("fsname", "special", "", "SOURCE", "file-system name shown by findmnt and mount"),
    Option("subtype", "special", "s3regfs", "s3regfs", "file-system subtype (fuse.SUBTYPE)"),
    Option(
        "readahead", "size", 128 * MiB, "128M", "largest read-ahead window of one open file (at least 128K)"
    ),
    Option("readahead_total", "size", 256 * MiB, "256M", "memory for read-ahead across all open files"),
    Option(
        "read_ranges",
        "int",
        16,
        "16",
        "ranged GETs in flight at once per file read sequentially (1: one stream per file)",
        lo=1,
        hi=1024,
    ),
    Option(
        "max_connections",
        "int",
        32,
        "32",
        "S3 requests in flight at once (and the connection pool size)",
        lo=1,
        hi=1024,
    ),
    Option("spooldir", "special", "", "the system temp dir", "where files being written are spooled"),
    Option(
        "spoolmax",
        "size",
        0,
        "0 (the disk's limit)",
        "most bytes spooled at once (holes cost nothing); past it writes answer ENOSPC",
    ),
    Option(
        "write_memory", "size", 256 * MiB, "256M", "memory for part uploads across all files being written"
    ),
    Option(
        "parts_in_flight",
        "int",
        10,
        "10",
        "parts of one file uploading at once (within write_memory)",
        lo=1,
        hi=1024,
    ),
    Option("commit_timeout", "seconds", 300.0, "300", "seconds to commit open files when unmounting"),
    Option(
        "verify", "flag", False, "off", "hash blob data files read from start to end; a mismatch answers EIO"
    ),
    Option(
        "views",
        "flag",
        False,
        "off",
        "show the views _images and _registry in the root's listing (they are always reachable by name)",
    ),
    Option("images", "flag", False, "off", "the older name of -o views"),
    Option(
        "cache",
        "special",
        "",
        "off",
        "keep blob data read through the mount in this directory, by digest, for later reads"
        " (shared by mounts and restarts; a blob enters only after its sha256 matched)",
    ),
    Option(
        "cache_size",
        "size",
        0,
        "10% of the file system holding the cache",
        "most bytes the blob cache keeps (least recently used go first)",
    ),
    Option(
        "cachedir",
        "special",
        "",
        "$CACHE_DIRECTORY, /var/cache/s3regfs (root) or ~/.cache/s3regfs; 'none': memory only",
        "where manifests read for the _registry reports are kept across mounts (by digest, checked on load)",
    ),
    Option(
        "statfs",
        "special",
        "seen",
        "seen",
        "df's used space: 'seen' (what listings saw) or 'scan' (a background count of the root)",
    ),
    Option(
        "statedir",
        "special",
        "",
        "$STATE_DIRECTORY, /var/lib/s3regfs (root) or ~/.local/state/s3regfs",
        "where the journal of this mount's multipart uploads is kept",
    ),
    Option(
        "abort_stale_uploads",
        "flag",
        False,
        "off",
        "abort the multipart uploads an earlier s3regfs of this bucket left open (else report them)",
    ),
    Option(
        "metrics",
        "special",
        "",
        "off",
        "serve the stats as Prometheus metrics at http://HOST:PORT/metrics (HOST defaults to 127.0.0.1)",
    ),
    Option(
        "cloudfront",
        "special",
        "",
        "on",
        "read blob data through the registry's cloudfront storage middleware when the config file"
        " or the cloudfront_* options configure it (cloudfront=false: straight from S3)",
    ),
    Option(
        "cloudfront_baseurl",
        "special",
        "",
        "the config file's",
        "the CloudFront distribution's URL (https:// added without a scheme, a trailing / added)",
    ),
    Option(
        "cloudfront_privatekey",
        "special",
        "",
        "the config file's",
        "path of the key pair's private key (PEM, PKCS#1 RSA: BEGIN RSA PRIVATE KEY)",
    ),
    Option("cloudfront_keypairid", "special", "", "the config file's", "the CloudFront key pair's id"),
    Option(
        "cloudfront_duration",
        "special",
        "",
        "20m",
        "how long a signed URL is valid (a Go duration such as 20m); reused until shortly before",
    ),
    Option(
        "cloudfront_ipfilteredby",
        "special",
        "",
        "none",
        "none, aws or awsregion: read straight from S3 when this host's address toward S3 is in"
        " AWS's ranges (of the cloudfront_awsregion regions)",
    ),
    Option(
        "cloudfront_awsregion",
        "special",
        "",
        "none",
        "comma-separated regions for ipfilteredby=awsregion (a comma in -o is written \\,)",
    ),
    Option(
        "cloudfront_updatefrequency",
        "special",
        "",
        "12h",
        "how often AWS's ip-ranges.json is fetched again (a Go duration)",
    ),
    Option(
        "cloudfront_iprangesurl",
        "special",
        "",
        "https://ip-ranges.amazonaws.com/ip-ranges.json",
        "where AWS's IP ranges are fetched from",
    ),
    Option("config", "special", "", "none", "the registry's config.yml (same as --config)"),
)

DRIVER: dict[str, Option] = {option.name: option for option in DRIVER_OPTIONS}
FS: dict[str, Option] = {option.name: option for option in FS_OPTIONS}


def default_of(name: str) -> object:
    """The declared default of a driver parameter or file-system option."""
    option = DRIVER.get(name) or FS[name]
    return option.default


def int_default(name: str) -> int:
    value = default_of(name)
    assert isinstance(value, int) and not isinstance(value, bool), name
    return value


def float_default(name: str) -> float:
    value = default_of(name)
    assert isinstance(value, float), name
    return value


def bool_default(name: str) -> bool:
    value = default_of(name)
    assert isinstance(value, bool), name
    return value


def str_default(name: str) -> str:
    value = default_of(name)
    assert isinstance(value, str), name
    return value


def help_lines() -> list[str]:
    """The options part of ``--help``."""
    lines = ["Driver parameters (the registry's S3 driver names, defaults and validation):"]
    lines += [f"  -o {option.name:<30} default: {option.shown}" for option in DRIVER_OPTIONS]
    lines += ["", "File-system options:"]
    lines += [f"  -o {option.name:<30} {option.help} (default: {option.shown})" for option in FS_OPTIONS]
    return lines


def driver_table() -> str:
    """The driver parameter table of docs/configuration.md."""
    rows = [
        "| parameter | default | read by | validation, and what s3regfs does with it |",
        "|---|---|---|---|",
    ]
    rows += [
        f"| `{option.name}` | {option.shown} | {option.known_by} | {option.doc_text} |"
        for option in DRIVER_OPTIONS
    ]
    return "\n".join(rows)


def fs_table() -> str:
    """The file-system option table of docs/configuration.md."""
    rows = ["| option | default | |", "|---|---|---|"]
    rows += [f"| `{option.name}` | {option.shown} | {option.doc_text} |" for option in FS_OPTIONS]
    return "\n".join(rows)


if __name__ == "__main__":
    print(driver_table(), fs_table(), sep="\n\n")
