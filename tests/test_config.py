# SPDX-License-Identifier: MIT
"""Parameters, config files, environment overrides and the command line (pure)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from s3regfs.cli import main, parse_argv
from s3regfs.config import (
    CANNED_ACLS,
    CHECKSUM_ALGORITHMS,
    DRIVER_PARAM_NAMES,
    FS_OPTION_NAMES,
    LOGLEVEL_FLAGS,
    STORAGE_CLASSES,
    DriverParams,
    GiB,
    MiB,
    MountOptions,
    build,
    build_driver,
    build_options,
    normalize_root,
    parse_bool,
    parse_go_duration,
    parse_int,
    parse_loglevel,
    split_mount_options,
)
from s3regfs.errors import ConfigError


def driver(**params: object):
    base: dict[str, object] = {"bucket": "b", "region": "us-east-1"}
    base.update(params)
    return build_driver(base)


def test_defaults_are_the_drivers() -> None:
    d = driver()
    assert d.chunksize == 10 * MiB
    assert d.multipartcopychunksize == 32 * MiB
    assert d.multipartcopymaxconcurrency == 100
    assert d.multipartcopythresholdsize == 32 * MiB
    assert d.secure is True and d.v4auth is True and d.encrypt is False
    assert d.storageclass == "STANDARD"
    assert d.objectacl == "private"
    assert d.maxretries == 5 and d.maxrequestspersecond == 350
    assert d.loglevel == frozenset()
    assert d.pathstyle is False
    assert d.endpoint_url is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("True", True),
        ("1", True),
        ("t", True),
        ("F", False),
        ("0", False),
    ],
)
def test_bool_parsing(value: object, expected: bool) -> None:
    assert parse_bool("encrypt", value) is expected


@pytest.mark.parametrize("value", ["yes", "on", "", 2, 1.0, None])
def test_bool_refuses(value: object) -> None:
    with pytest.raises(ConfigError, match="the encrypt parameter should be a boolean"):
        parse_bool("encrypt", value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5242880, 5242880), ("5242880", 5242880), ("0x500000", 0x500000), (" 6291456 ", 6291456)],
)
def test_int_parsing(value: object, expected: int) -> None:
    assert parse_int("chunksize", value, 5 * MiB, 5 * GiB) == expected


@pytest.mark.parametrize("value", ["10M", "5.5", 5.0, True, "", "abc"])
def test_int_refuses_non_integers(value: object) -> None:
    with pytest.raises(ConfigError, match="chunksize parameter must be an integer"):
        parse_int("chunksize", value, 5 * MiB, 5 * GiB)


@pytest.mark.parametrize("value", [5 * MiB - 1, 5 * GiB + 1])
def test_chunksize_range(value: int) -> None:
    with pytest.raises(
        ConfigError, match=r"the chunksize \d+ parameter should be a number between 5242880 and 5368709120"
    ):
        driver(chunksize=value)


def test_threshold_may_be_zero_and_concurrency_not() -> None:
    assert driver(multipartcopythresholdsize=0).multipartcopythresholdsize == 0
    with pytest.raises(ConfigError, match="multipartcopymaxconcurrency"):
        driver(multipartcopymaxconcurrency=0)


def test_storage_class() -> None:
    assert driver(storageclass="reduced_redundancy").storageclass == "REDUCED_REDUNDANCY"
    assert driver(storageclass="NONE").storageclass == "NONE"
    assert driver(storageclass="glacier_ir").storageclass == "GLACIER_IR"
    with pytest.raises(ConfigError, match="storageclass parameter must be one of"):
        driver(storageclass="DEEP_ARCHIVE")
    with pytest.raises(ConfigError, match="must be a string"):
        driver(storageclass=5)


def test_object_acl_and_ownership() -> None:
    assert driver(objectacl="bucket-owner-full-control").objectacl == "bucket-owner-full-control"
    with pytest.raises(ConfigError, match="invalid value for objectacl parameter"):
        driver(objectacl="Private")
    assert driver(objectownership=True).objectownership is True
    with pytest.raises(
        ConfigError, match="the objectacl parameter should not be set when objectownership is enabled"
    ):
        driver(objectownership=True, objectacl="private")


def test_required_parameters() -> None:
    with pytest.raises(ConfigError, match="no bucket parameter provided"):
        build_driver({"region": "us-east-1"})
    with pytest.raises(ConfigError, match="no region parameter provided"):
        build_driver({"bucket": "b"})
    assert build_driver({"bucket": "b", "regionendpoint": "http://h:9000"}).region == ""
    for bad in ([None, None], {"a": 1}, "a,b", "my bucket", "-x"):
        with pytest.raises(ConfigError, match="must be an S3 bucket name"):
            driver(bucket=bad)
    assert driver(bucket="Legacy_Bucket.1").bucket == "Legacy_Bucket.1"


def test_v4auth_false_refused_on_amazon() -> None:
    with pytest.raises(ConfigError, match="only be used with v4 authentication"):
        driver(v4auth=False)
    with pytest.raises(ConfigError, match="v4 authentication"):
        driver(v4auth=False, regionendpoint="https://s3.amazonaws.com")
    assert driver(v4auth="false", regionendpoint="http://minio:9000").v4auth is False


def test_path_style() -> None:
    assert driver(regionendpoint="http://minio:9000").pathstyle is True
    assert driver(regionendpoint="http://minio:9000", forcepathstyle=False).pathstyle is False
    assert driver(pathstyle="true").pathstyle is True
    assert driver(forcepathstyle=True).pathstyle is True
    with pytest.raises(ConfigError, match="disagree"):
        driver(forcepathstyle=True, pathstyle=False)


def test_endpoint_scheme_follows_secure() -> None:
    assert driver(regionendpoint="minio:9000").endpoint_url == "https://minio:9000"
    assert driver(regionendpoint="minio:9000", secure=False).endpoint_url == "http://minio:9000"
    assert driver(regionendpoint="https://x", secure=False).endpoint_url == "https://x"


def test_keyid_without_encrypt_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert driver(keyid="k").keyid == ""
    assert "keyid is ignored" in caplog.text
    assert driver(keyid="k", encrypt=True).keyid == "k"


def test_loglevel_both_spellings(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_loglevel("debug") == {"debug"}
    assert parse_loglevel("DebugWithSigning") == {"signing"}
    assert parse_loglevel("logdebug,logdebugwithhttpbody") == {"debug", "httpbody"}
    assert parse_loglevel("logdebug,logoff") == frozenset()
    assert parse_loglevel(False) == frozenset()
    with caplog.at_level(logging.WARNING):
        assert parse_loglevel("logdebug,logrequest") == {"debug"}
    assert "logrequest" in caplog.text


def test_checksum_and_redirect() -> None:
    assert driver(checksum_algorithm="crc32").checksum_algorithm == "CRC32"
    with pytest.raises(ConfigError, match="checksum_algorithm"):
        driver(checksum_algorithm="MD5")
    assert driver(redirectendpoint="https://cdn.example").redirectendpoint == "https://cdn.example"
    with pytest.raises(ConfigError, match="redirectendpoint"):
        driver(redirectendpoint="https://cdn.example/path")


@pytest.mark.parametrize(
    ("root", "prefix"),
    [
        ("", ""),
        ("/", ""),
        ("//", ""),
        ("/a/b/", "a/b/"),
        ("a/b", "a/b/"),
        ("/a/b", "a/b/"),
        ("/registry-v2", "registry-v2/"),
    ],
)
def test_root_directory_key_prefix(root: str, prefix: str) -> None:
    assert normalize_root(root) == prefix
    assert driver(rootdirectory=root).key_prefix == prefix


def test_split_mount_options() -> None:
    assert split_mount_options("ro,uid=5,loglevel=logdebug\\,logdebugwithsigning") == [
        ("ro", None),
        ("uid", "5"),
        ("loglevel", "logdebug,logdebugwithsigning"),
    ]
    assert split_mount_options("a=x\\\\y,,b") == [("a", "x\\y"), ("b", None)]


REGISTRY_CONFIG = """\
version: 0.1
log:
  level: info
storage:
  s3aws:
    accesskey: AKIAFILE
    secretkey: file-secret
    region: eu-west-1
    bucket: from-file
    rootdirectory: /file-root
    chunksize: 6291456
    secure: off
    usefipsendpoint: false
    checksum_disabled: true
    somethingnew: 1
  delete:
    enabled: true
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: :5000
"""


def test_registry_config_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.yml"
    path.write_text(REGISTRY_CONFIG)
    with caplog.at_level(logging.WARNING):
        cfg = build(source=None, mountpoint="/mnt", config_file=str(path), environ={})
    d = cfg.driver
    assert (d.bucket, d.region, d.accesskey, d.secretkey) == (
        "from-file",
        "eu-west-1",
        "AKIAFILE",
        "file-secret",
    )
    assert d.key_prefix == "file-root/" and d.chunksize == 6291456 and d.secure is False
    assert d.checksum_disabled is True
    assert "somethingnew" in caplog.text and "file-secret" not in caplog.text
    assert cfg.options.fsname == "from-file:/file-root"


def test_precedence(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(REGISTRY_CONFIG)
    environ = {
        "REGISTRY_STORAGE_S3AWS_CHUNKSIZE": "7340032",
        "REGISTRY_STORAGE_S3AWS_BUCKET": "from-env",
        "REGISTRY_STORAGE_S3AWS_ENCRYPT": "true",
        "REGISTRY_STORAGE_S3AWS_SECURE": "on",
        "REGISTRY_HTTP_ADDR": ":6000",
    }
    cfg = build(source=None, mountpoint="/m", config_file=str(path), environ=environ)
    assert cfg.driver.bucket == "from-env" and cfg.driver.chunksize == 7340032
    assert cfg.driver.encrypt is True and cfg.driver.secure is True  # YAML-decoded "on"
    cfg = build(source="from-source:/src-root", mountpoint="/m", config_file=str(path), environ=environ)
    assert cfg.driver.bucket == "from-source" and cfg.driver.key_prefix == "src-root/"
    cfg = build(
        source="from-source:/src-root",
        mountpoint="/m",
        config_file=str(path),
        environ=environ,
        mount_options=[("bucket", "from-o"), ("chunksize", "8388608"), ("rootdirectory", "/")],
    )
    assert cfg.driver.bucket == "from-o" and cfg.driver.chunksize == 8388608 and cfg.driver.key_prefix == ""


def test_environment_names_gitlab_s3_v2(tmp_path: Path) -> None:
    environ = {
        "REGISTRY_STORAGE_S3_V2_BUCKET": "v2",
        "REGISTRY_STORAGE_S3_V2_CHECKSUM_DISABLED": "true",
        "REGISTRY_STORAGE_S3_V2_REGION": "us-east-1",
    }
    cfg = build(source=None, mountpoint="/m", environ=environ)
    assert cfg.driver.bucket == "v2" and cfg.driver.checksum_disabled is True


def test_environment_for_another_driver_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(REGISTRY_CONFIG)
    with pytest.raises(ConfigError, match="exactly one storage type"):
        build(
            source=None, mountpoint="/m", config_file=str(path), environ={"REGISTRY_STORAGE_S3_BUCKET": "x"}
        )


def test_non_s3_driver_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n")
    with pytest.raises(ConfigError, match="'filesystem' is not an S3 driver"):
        build(source=None, mountpoint="/m", config_file=str(path), environ={})


def test_bare_parameter_file_with_s3regfs_section(tmp_path: Path) -> None:
    path = tmp_path / "mnt.yml"
    path.write_text("bucket: bare\nregion: us-east-1\ns3regfs:\n  ro: true\n  metadata_ttl: 5\n")
    cfg = build(source=None, mountpoint="/m", config_file=str(path), environ={})
    assert cfg.driver.bucket == "bare" and cfg.options.ro is True and cfg.options.metadata_ttl == 5


def test_gitlab_database_mode_detected(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("storage:\n  s3:\n    bucket: b\n    region: us-east-1\ndatabase:\n  enabled: prefer\n")
    assert build(source=None, mountpoint="/m", config_file=str(path), environ={}).database_enabled


def test_mount_options() -> None:
    opts = [
        ("ro", None),
        ("uid", "1000"),
        ("gid", "1000"),
        ("umask", "027"),
        ("metadata_ttl", "2.5"),
        ("_netdev", None),
        ("nofail", None),
        ("x-systemd.automount", None),
        ("dev", None),
        ("suid", None),
        ("readahead", "4M"),
        ("allow_other", None),
        ("default_permissions", None),
    ]
    cfg = build(source="b", mountpoint="/m", mount_options=[*opts, ("region", "us-east-1")], environ={})
    o = cfg.options
    assert (o.ro, o.uid, o.gid, o.umask, o.metadata_ttl, o.readahead) == (
        True,
        1000,
        1000,
        0o027,
        2.5,
        4 * MiB,
    )
    assert o.fsname == "b" and o.subtype == "s3regfs" and o.allow_other


@pytest.mark.parametrize("option", ["frobnicate", "bogus=1"])
def test_unknown_option_is_named(option: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown option -o {option.split('=')[0]}"):
        build(
            source="b",
            mountpoint="/m",
            mount_options=split_mount_options(option + ",region=us-east-1"),
            environ={},
        )


def test_secret_on_command_line_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        build(
            source="b",
            mountpoint="/m",
            mount_options=[("region", "us-east-1"), ("secretkey", "s3cr3t-value")],
            environ={},
        )
    assert "visible to every user in ps" in caplog.text
    assert "s3cr3t-value" not in caplog.text


def test_argv_options_after_positionals() -> None:
    args = parse_argv(["bucket:/root", "/mnt", "-o", "ro,dev,suid", "-f", "--config=/etc/x.yml"])
    assert args.positionals == ["bucket:/root", "/mnt"]
    assert args.foreground and args.config_file == "/etc/x.yml"
    assert ("ro", None) in args.mount_options


def test_cli_bad_value_is_one_line_without_secret(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["-o", "region=us-east-1,secretkey=TOPSECRET1,accesskey=AK,chunksize=10M", "bkt", "/mnt"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if "error" in line]
    assert lines == ["s3regfs: error: chunksize parameter must be an integer, '10M' invalid"]
    assert "TOPSECRET1" not in err and "Traceback" not in err


def test_cli_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in (
        "chunksize",
        "multipartcopythresholdsize",
        "objectownership",
        "maxretries",
        "metadata_ttl",
        "read_timeout",
        "fsname",
    ):
        assert f"-o {name}" in out
    assert "default: 10 MiB" in out


def test_statfs_option() -> None:
    assert (
        build(
            source="b",
            mountpoint="/m",
            mount_options=[("region", "us-east-1"), ("statfs", "scan")],
            environ={},
        ).options.statfs
        == "scan"
    )
    with pytest.raises(ConfigError, match="statfs option takes seen or scan"):
        build(
            source="b",
            mountpoint="/m",
            mount_options=[("region", "us-east-1"), ("statfs", "all")],
            environ={},
        )


def test_world_readable_credentials_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mnt.yml"
    path.write_text("bucket: b\nregion: us-east-1\nsecretkey: abcdefgh\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        build(source=None, mountpoint="/m", config_file=str(path), environ={})
    assert "readable by every user" in caplog.text and "abcdefgh" not in caplog.text
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        build(source=None, mountpoint="/m", config_file=str(path), environ={})
    assert "readable by every user" not in caplog.text


def _one_line(exc: ConfigError) -> None:
    message = str(exc)
    assert message and message.isprintable(), repr(message)


def _valid_driver(d: DriverParams) -> None:
    assert d.bucket and isinstance(d.bucket, str)
    assert d.region or d.regionendpoint
    assert d.region == "" or d.region.isprintable() and "\n" not in d.region
    assert 5 * MiB <= d.chunksize <= 5 * GiB and 5 * MiB <= d.multipartcopychunksize <= 5 * GiB
    assert 0 <= d.multipartcopythresholdsize <= 5 * GiB and d.multipartcopymaxconcurrency >= 1
    assert d.maxretries >= 0 and d.maxrequestspersecond >= 0
    assert d.storageclass in STORAGE_CLASSES and d.objectacl in CANNED_ACLS
    assert d.checksum_algorithm in ("", *CHECKSUM_ALGORITHMS)
    assert d.loglevel <= set(LOGLEVEL_FLAGS.values())
    for name in ("encrypt", "secure", "skipverify", "v4auth", "pathstyle", "objectownership"):
        assert isinstance(getattr(d, name), bool)
    assert d.key_prefix == "" or (d.key_prefix.endswith("/") and not d.key_prefix.startswith("/"))


def _valid_options(o: MountOptions) -> None:
    for seconds in (o.metadata_ttl, o.connect_timeout, o.read_timeout, o.commit_timeout):
        assert 0 <= seconds < float("inf")
    assert o.readahead >= 128 * 1024 and o.readahead_total >= 0
    assert 0 <= o.umask <= 0o777 and 1 <= o.max_connections <= 1024
    assert 0 <= o.uid < 2**32 - 1 and 0 <= o.gid < 2**32 - 1
    assert o.statfs in ("seen", "scan")
    assert o.fsname and "," not in o.fsname and o.subtype and "," not in o.subtype


BOUNDED = settings(max_examples=200, deadline=None)

#: Values a user writes, right and wrong, and what YAML makes of them.
_WORDS = st.sampled_from(
    [
        "",
        "true",
        "False",
        "1",
        "0x500000",
        "5242880",
        " 6291456 ",
        "10M",
        "64M",
        "1GiB",
        "022",
        "2.5",
        "1e999",
        "inf",
        "nan",
        "-1",
        "us-east-1",
        "us-east-1\n",
        "STANDARD_ia",
        "private",
        "logdebug,logdebugwithsigning",
        "off",
        "http://h:9000",
        "https://cdn.example/\n",
        "sha256",
        "scan",
        "1" * 5000,
        "2001-02-30",
        "a\nb",
    ]
)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30), _WORDS)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@BOUNDED
@given(st.dictionaries(st.sampled_from(DRIVER_PARAM_NAMES) | st.text(max_size=12), _VALUES, max_size=10))
@example({"bucket": "b", "region": "us-east-1\n"})
@example({"bucket": "b", "region": "us-east-1", "redirectendpoint": "http://h\n"})
@example({"bucket": "b", "region": "us-east-1", "chunksize": "1" * 5000})
def test_any_driver_parameters_parse_or_are_refused_in_one_line(raw: dict[str, object]) -> None:
    try:
        params = build_driver(raw)
    except ConfigError as exc:
        _one_line(exc)
    else:
        _valid_driver(params)


@BOUNDED
@given(
    st.dictionaries(
        st.sampled_from([name for name in FS_OPTION_NAMES if name != "config"]) | st.text(max_size=12),
        st.none() | st.text(max_size=20) | _WORDS,
        max_size=8,
    )
)
@example({"uid": "1" * 5000})
@example({"readahead": "1" * 5000})
@example({"metrics": "1" * 5000})
@example({"metadata_ttl": "1e999"})
@example({"connect_timeout": "inf"})
@example({"umask": "022\n"})
def test_any_mount_options_parse_or_are_refused_in_one_line(raw: dict[str, str | None]) -> None:
    try:
        options = build_options(raw, source="bucket")
    except ConfigError as exc:
        _one_line(exc)
    else:
        _valid_options(options)


_OPTION_NAMES = st.sampled_from(
    [name for name in (*DRIVER_PARAM_NAMES, *FS_OPTION_NAMES) if name not in ("config", "spooldir")]
)


@BOUNDED
@given(
    st.lists(
        st.tuples(_OPTION_NAMES | st.text(max_size=8), st.none() | _WORDS | st.text(max_size=12)), max_size=8
    ),
    st.dictionaries(
        st.sampled_from(
            ["REGISTRY_STORAGE_S3_", "REGISTRY_STORAGE_S3AWS_", "REGISTRY_STORAGE_S3_V2_"]
        ).flatmap(lambda head: _OPTION_NAMES.map(lambda name: head + name.upper())),
        _WORDS | st.text(max_size=12),
        max_size=3,
    ),
)
@example([("region", "us-east-1")], {"REGISTRY_STORAGE_S3_KEYID": "2001-02-30"})
@example([("region", "us-east-1"), ("a\nb", None)], {})
def test_any_command_line_and_environment_build_or_are_refused_in_one_line(
    items: list[tuple[str, str | None]], environ: dict[str, str]
) -> None:
    # Written as on the command line (commas and backslashes escaped), then split.
    text = ",".join(
        key if value is None else key + "=" + value.replace("\\", "\\\\").replace(",", "\\,")
        for key, value in items
    )
    options = [item for item in split_mount_options(text) if item[0] not in ("config", "spooldir")]
    try:
        cfg = build(source="bucket", mountpoint="/m", mount_options=options, environ=environ)
    except ConfigError as exc:
        _one_line(exc)
    else:
        _valid_driver(cfg.driver)
        _valid_options(cfg.options)


_KEYS = st.text(min_size=1, max_size=10).map(str.strip).filter(lambda k: k and not set(k) & set(",=\\"))


@BOUNDED
@given(st.lists(st.tuples(_KEYS, st.none() | st.text(max_size=15)), max_size=6))
def test_mount_option_text_round_trips(items: list[tuple[str, str | None]]) -> None:
    text = ",".join(
        key if value is None else key + "=" + value.replace("\\", "\\\\").replace(",", "\\,")
        for key, value in items
    )
    assert split_mount_options(text) == items


_DOCUMENTS = st.one_of(
    st.dictionaries(st.sampled_from(DRIVER_PARAM_NAMES) | st.text(max_size=8), _VALUES, max_size=6).map(
        lambda params: {"storage": {"s3": params}}
    ),
    st.tuples(
        st.sampled_from(["s3", "s3aws", "s3_v2", "filesystem", "delete"]),
        st.dictionaries(st.sampled_from(DRIVER_PARAM_NAMES), _VALUES, max_size=6),
        st.dictionaries(st.sampled_from(list(FS_OPTION_NAMES)) | st.text(max_size=6), _VALUES, max_size=3),
    ).map(lambda t: {"storage": {t[0]: t[1]}, "s3regfs": t[2]}),
    st.dictionaries(
        st.sampled_from(["bucket", "region", "storage", "s3regfs", "database"]), _VALUES, max_size=4
    ),
    _VALUES,
)


@BOUNDED
@given(st.one_of(_DOCUMENTS.map(yaml.safe_dump), st.text(max_size=200)))
@example("storage:\n  s3:\n    bucket: b\n    region: 2001-02-30\n")
@example("[" * 2000)
@example("bucket: b\nregion: us-east-1\ns3regfs: [1]\n")
def test_any_config_file_builds_or_is_refused_in_one_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yml"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = build(source=None, mountpoint="/m", config_file=str(path), environ={})
        except ConfigError as exc:
            _one_line(exc)
        else:
            _valid_driver(cfg.driver)
            _valid_options(cfg.options)


def test_docs_tables_and_help_come_from_the_declarations() -> None:
    from s3regfs.cli import help_text
    from s3regfs.options import DRIVER_OPTIONS, FS_OPTIONS, driver_table, fs_table

    docs = (Path(__file__).resolve().parent.parent / "docs/configuration.md").read_text()
    # Run `python -m s3regfs.options` and paste its tables when this fails.
    assert driver_table() in docs
    assert fs_table() in docs
    shown = help_text()
    for option in (*DRIVER_OPTIONS, *FS_OPTIONS):
        assert f"-o {option.name} " in shown and option.shown in shown, option.name


def test_every_declared_option_is_parsed_and_its_default_is_the_dataclass_default() -> None:
    from s3regfs.options import DRIVER_OPTIONS, FS_OPTIONS

    d = driver()
    for option in DRIVER_OPTIONS:
        if option.kind in ("str", "bool", "int"):
            assert getattr(d, option.name) == option.default, option.name
    defaults = MountOptions()
    for option in FS_OPTIONS:
        if option.kind in ("flag", "seconds", "size") and option.name not in ("rw",):
            assert getattr(defaults, option.name) == option.default, option.name
    samples = {"flag": None, "int": "7", "seconds": "1.5", "size": "1M"}
    for option in FS_OPTIONS:
        if option.kind in samples:
            build_options({option.name: samples[option.kind]}, source="b")  # no AssertionError


def test_secret_value_spans_follow_the_option_parser() -> None:
    from s3regfs.cli import secret_value_spans

    names = frozenset({"accesskey", "secretkey"})
    cases = [
        b"accesskey=a,secretkey=b,x=1",
        b"x=a\\\\,secretkey=S",
        b"secretkey=x\\,y,region=a",
        b"secretkey=ends\\",
    ]
    for arg in cases:
        spans = secret_value_spans([b"python", b"-o", arg], names)
        # Exactly the secret values the option parser reads, nothing else.
        parsed = {k: v for k, v in split_mount_options(arg.decode()) if k in names}
        assert len(spans) == len(parsed), arg
        for _, start, end in spans:
            assert arg[start:end].decode().replace("\\,", ",").replace("\\\\", "\\") in parsed.values(), arg
    assert secret_value_spans([b"python", b"-osecretkey=s", b"bucket-secretkey=x", b"/mnt"], names) == [
        (1, 12, 13)
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("168h", 604800.0), ("1h30m", 5400.0), ("90s", 90.0), ("1.5h", 5400.0), ("0", 0.0), ("500ms", 0.5)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "10", "1x", "1h 30m", "one hour"])
def test_go_durations_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


def test_upload_purging_age_from_the_registry_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    storage = "storage:\n  s3:\n    bucket: b\n    region: us-east-1\n"
    path.write_text(storage)
    assert (
        build(source=None, mountpoint="/mnt", config_file=str(path), environ={}).upload_purge_age
        == 168 * 3600
    )
    path.write_text(storage + "  maintenance:\n    uploadpurging:\n      enabled: true\n      age: 72h30m\n")
    assert (
        build(source=None, mountpoint="/mnt", config_file=str(path), environ={}).upload_purge_age
        == 72.5 * 3600
    )
    path.write_text(storage + "  maintenance:\n    uploadpurging:\n      age: soon\n")
    with pytest.raises(ConfigError, match="uploadpurging.age"):
        build(source=None, mountpoint="/mnt", config_file=str(path), environ={})


def test_views_and_cachedir_options(tmp_path: Path) -> None:
    options = build_options({"images": None, "cachedir": str(tmp_path)}, source="b")
    assert options.views and options.cachedir == str(tmp_path)
    assert build_options({"cachedir": "none"}, source="b").cachedir == ""
    assert not build_options({}, source="b").views
