# SPDX-License-Identifier: MIT
"""Security, through the real mount: where secrets may appear (argv, /proc,
logs, error messages), who may use the mount (allow_other, uid, gid, umask),
TLS verification, and the registry's documented S3 policy being enough."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.util import (
    MotoServer,
    free_port,
    fuse_test_marker,
    mounted,
    run_cli,
    start_moto,
    stop_process,
    wait_for_port,
)

pytestmark = fuse_test_marker()

MiB = 1024 * 1024


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("s3regfs: error: ")
    return lines[0]


# -- secrets ------------------------------------------------------------------------


def argv_holding(*secrets: str) -> dict[int, bytes]:
    """Every process on the machine whose argv (what ps shows) holds one of *secrets*."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if any(secret.encode() in cmdline for secret in secrets):
                found[int(entry.name)] = cmdline
    return found


def mount_line(path: Path) -> str:
    lines = [line for line in Path("/proc/mounts").read_text().splitlines() if line.split()[1] == str(path)]
    assert len(lines) == 1, lines
    return lines[0]


DEBUG_LEVELS = "loglevel=logdebug\\,logdebugwithsigning\\,logdebugwithhttpbody\\,logdebugwithrequestretries"


@pytest.mark.parametrize("source", ["config file", "environment"])
def test_secrets_stay_out_of_argv_proc_mounts_and_debug_logs(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path, source: str, other_user: None
) -> None:
    s3.put_object(Bucket=bucket, Key="f", Body=b"data")
    secret = "SECRET" + uuid.uuid4().hex
    token = "TOKEN" + uuid.uuid4().hex
    args = ["-d", "-o", DEBUG_LEVELS]
    if source == "config file":
        config = tmp_path / "s3.yml"
        config.write_text(
            f"bucket: {bucket}\nregion: us-east-1\nregionendpoint: {moto.url}\n"
            f"accesskey: AKIAFROMFILE\nsecretkey: {secret}\nsessiontoken: {token}\n"
        )
        config.chmod(0o644)  # readable by every user: warned about, naming the file
        args += ["--config", str(config)]
        env = {}
    else:  # boto3's default chain
        args += ["-o", f"regionendpoint={moto.url},region=us-east-1", bucket]
        env = {
            "AWS_ACCESS_KEY_ID": "AKIAFROMENV",
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_SESSION_TOKEN": token,
        }
    with mounted(tmp_path / "mnt", args, env=env, check_clean=False) as mount:
        assert (mount.path / "f").read_bytes() == b"data"
        (mount.path / "g").write_bytes(b"more")
        assert argv_holding(secret, token) == {}
        line = mount_line(mount.path)
        assert secret not in line and token not in line and bucket in line
        # The environment of the daemon is its owner's alone.
        refused = subprocess.run(
            [
                "setpriv",
                f"--reuid={OTHER['uid']}",
                f"--regid={OTHER['gid']}",
                "--clear-groups",
                "cat",
                f"/proc/{mount.process.pid}/environ",
            ],
            capture_output=True,
        )
        assert refused.returncode != 0 and secret.encode() not in refused.stdout
    log = mount.stderr
    assert "botocore.auth" in log and "Signature:" in log  # the levels did log the signing
    assert secret not in log and token not in log
    # Neither the Authorization header's signature nor botocore.auth's "Signature:" line.
    assert not re.search(r"Signature[=:]\s*[0-9a-f]{64}", log), log
    if source == "config file":
        assert f"config file {config} holds credentials and is readable by every user" in log


def test_secret_given_with_o_is_blanked_from_argv(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """-o secretkey works, with a warning; the daemon then overwrites the
    values in its own argv, so ps shows them only while it starts."""
    s3.put_object(Bucket=bucket, Key="f", Body=b"data")
    secret = "SECRET" + uuid.uuid4().hex
    token = "TOKEN" + uuid.uuid4().hex
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    options = f"regionendpoint={moto.url},region=us-east-1,accesskey=AKIAONARGV,secretkey={secret},sessiontoken={token}"
    result = run_cli(["-o", options, bucket, str(mnt)])  # daemon mode: the forked child serves
    try:
        assert result.returncode == 0, result.stderr
        assert (mnt / "f").read_bytes() == b"data"
        assert argv_holding(secret, token, "AKIAONARGV") == {}
        daemons = argv_holding(str(mnt))
        assert len(daemons) == 1, daemons
        (cmdline,) = daemons.values()
        assert b"secretkey=" + b"x" * len(secret) in cmdline and b"x" * len(token) in cmdline
        assert "-o secretkey on the command line is visible to every user in ps" in result.stderr
        assert secret not in result.stderr
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)


@pytest.mark.parametrize(
    ("environment", "code", "message"),
    [
        ({"AWS_CA_BUNDLE": ""}, 2, "cannot set up the S3 client: Invalid CA bundle"),
        (
            {"AWS_PROFILE": "no-such-profile"},
            2,
            "cannot set up the S3 client: The config profile (no-such-profile)",
        ),
    ],
)
def test_client_setup_errors_are_one_line_without_secrets(
    moto: MotoServer, bucket: str, tmp_path: Path, environment: dict[str, str], code: int, message: str
) -> None:
    (tmp_path / "mnt").mkdir()
    secret = "SECRET" + uuid.uuid4().hex
    env = {"REGISTRY_STORAGE_S3_ACCESSKEY": "AK", "REGISTRY_STORAGE_S3_SECRETKEY": secret, **environment}
    result = run_cli(
        ["-o", f"regionendpoint={moto.url},region=us-east-1", bucket, str(tmp_path / "mnt")], env=env
    )
    assert result.returncode == code and message in one_error_line(result)
    assert secret not in result.stderr


# -- who may use the mount -------------------------------------------------------------

#: The second, unprivileged user of these tests, made for them (see other_user).
OTHER_USER = "s3regfs-test"
OTHER: dict[str, int] = {}


def _make_other_user() -> bool:
    """Create OTHER_USER (with its own group) unless it exists; True if created."""
    try:
        pwd.getpwnam(OTHER_USER)
        return False
    except KeyError:
        pass
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            OTHER_USER,
        ],
        check=True,
        capture_output=True,
    )
    return True


@pytest.fixture(scope="module")
def other_user() -> Iterator[None]:
    """The second user exists for this module's tests, and is removed after them."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create a second user")
    created = _make_other_user()
    entry = pwd.getpwnam(OTHER_USER)
    OTHER.update(uid=entry.pw_uid, gid=entry.pw_gid)
    yield
    if created:
        subprocess.run(["userdel", OTHER_USER], check=False, capture_output=True)


#: Run as another user by /usr/bin/python3 (the test's virtual environment may
#: not be readable by it): each operation's outcome, "ok" or the errno's name.
_PROBE = r"""
import errno, json, os, sys
def attempt(op, path):
    try:
        if op == "stat": os.stat(path)
        elif op == "listdir": os.listdir(path)
        elif op == "read":
            with open(path, "rb") as f: f.read()
        elif op == "write":
            with open(path, "r+b") as f: f.write(b"changed")
        elif op == "create":
            with open(path, "xb") as f: f.write(b"by another user")
        elif op == "mkdir": os.mkdir(path)
        elif op == "unlink": os.unlink(path)
        elif op == "chmod": os.chmod(path, 0o777)
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps([attempt(op, path) for op, path in json.loads(sys.argv[1])]))
"""


def as_other_user(*operations: tuple[str, Path]) -> list[str]:
    result = subprocess.run(
        [
            "setpriv",
            f"--reuid={OTHER['uid']}",
            f"--regid={OTHER['gid']}",
            "--clear-groups",
            "/usr/bin/python3",
            "-I",
            "-c",
            _PROBE,
            json.dumps([(op, str(path)) for op, path in operations]),
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd="/",
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    outcomes: list[str] = json.loads(result.stdout)
    return outcomes


@pytest.fixture
def shared_dir(other_user: None) -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is root's alone)."""
    if not os.access("/usr/bin/python3", os.X_OK) or shutil.which("setpriv") is None:
        pytest.skip("needs /usr/bin/python3 and setpriv to act as another user")
    path = Path(tempfile.mkdtemp(prefix="s3regfs-security-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_without_allow_other_only_the_mounting_user_gets_in(
    s3: Any, bucket: str, endpoint_opts: list[str], shared_dir: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="f", Body=b"data")
    with mounted(shared_dir / "mnt", [*endpoint_opts, "-o", "umask=000", bucket]) as mount:
        assert os.listdir(mount.path) == ["f"]
        mnt = mount.path
        # Not even the mode bits (umask=000) let another user in.
        assert (
            as_other_user(("stat", mnt), ("listdir", mnt), ("stat", mnt / "f"), ("read", mnt / "f"))
            == ["EACCES"] * 4
        )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # The root directory is 0700: nothing below it is reachable.
        ("umask=077", {"stat": "ok", "listdir": "EACCES", "read": "EACCES", "create": "EACCES"}),
        # 0755 and 0644, owned by root: read, never change.
        (
            "umask=022",
            {
                "listdir": "ok",
                "read": "ok",
                "write": "EACCES",
                "create": "EACCES",
                "mkdir": "EACCES",
                "unlink": "EACCES",
                "chmod": "EPERM",
            },
        ),
        # Every file is the other user's.
        (
            "uid={uid}",
            {"write": "ok", "create": "ok", "mkdir": "ok", "chmod": "ok", "unlink": "ok"},
        ),
        # Group-writable and the other user's group.
        ("gid={gid},umask=002", {"write": "ok", "create": "ok", "mkdir": "ok", "unlink": "ok"}),
    ],
)
def test_allow_other_follows_uid_gid_and_umask(
    s3: Any, bucket: str, endpoint_opts: list[str], shared_dir: Path, options: str, expected: dict[str, str]
) -> None:
    s3.put_object(Bucket=bucket, Key="f", Body=b"data")
    s3.put_object(Bucket=bucket, Key="doomed", Body=b"delete me")
    options = options.format(**OTHER)
    with mounted(shared_dir / "mnt", [*endpoint_opts, "-o", f"allow_other,{options}", bucket]) as mount:
        mnt = mount.path
        targets = {
            "stat": mnt,
            "listdir": mnt,
            "read": mnt / "f",
            "write": mnt / "f",
            "create": mnt / "new",
            "mkdir": mnt / "dir",
            "chmod": mnt / "f",
            "unlink": mnt / "doomed",
        }
        operations = [(op, targets[op]) for op in expected]
        assert dict(zip(expected, as_other_user(*operations), strict=True)) == expected
        assert "default_permissions" in mount_line(mnt) and "allow_other" in mount_line(mnt)
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    body = s3.get_object(Bucket=bucket, Key="f")["Body"].read()
    if expected.get("create") == "ok":
        assert s3.get_object(Bucket=bucket, Key="new")["Body"].read() == b"by another user"
    else:
        assert "new" not in keys
    assert body == (b"changed" if expected.get("write") == "ok" else b"data")
    assert ("doomed" in keys) == (expected.get("unlink") != "ok")


# -- TLS ------------------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for IP 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "s3regfs test endpoint")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class TLSEndpoint:
    def __init__(self, port: int, process: subprocess.Popen[bytes], cert: Path) -> None:
        self.port, self.process, self.cert = port, process, cert
        self.url = f"https://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def tls_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSEndpoint]:
    """moto_server over HTTPS with a self-signed certificate; bucket "tls-bucket" holds "f"."""
    import boto3

    directory = tmp_path_factory.mktemp("tls")
    cert, key = make_certificate(directory)
    port = free_port()
    moto = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    with open(directory / "moto.log", "wb") as log_file:
        process = subprocess.Popen(
            [moto, "-H", "127.0.0.1", "-p", str(port), "-c", str(cert), "-k", str(key)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process)
        endpoint = TLSEndpoint(port, process, cert)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint.url,
            region_name="us-east-1",
            aws_access_key_id="testing-key",
            aws_secret_access_key="testing-secret",
            verify=str(cert),
        )
        client.create_bucket(Bucket="tls-bucket")
        client.put_object(Bucket="tls-bucket", Key="f", Body=b"over TLS")
        yield endpoint
    finally:
        stop_process(process)


@pytest.fixture
def no_ca_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mounts see no CA bundle variable unless a test sets one."""
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_ca_environment")
@pytest.mark.parametrize("foreground", [True, False])
@pytest.mark.parametrize(
    ("host", "bundle", "reason"),
    [
        ("127.0.0.1", None, "TLS certificate verify failed: self-signed certificate"),
        (
            "localhost",
            "cert",
            "TLS certificate verify failed: hostname 'localhost' doesn't match '127.0.0.1'",
        ),
    ],
)
def test_tls_certificate_is_verified(
    tls_endpoint: TLSEndpoint, tmp_path: Path, foreground: bool, host: str, bundle: str | None, reason: str
) -> None:
    (tmp_path / "mnt").mkdir()
    endpoint = f"https://{host}:{tls_endpoint.port}"
    env = {"AWS_CA_BUNDLE": str(tls_endpoint.cert)} if bundle else {}
    result = run_cli(
        [
            *(["-f"] if foreground else []),
            "-o",
            f"regionendpoint={endpoint},region=us-east-1",
            "tls-bucket",
            str(tmp_path / "mnt"),
        ],
        env=env,
    )
    line = one_error_line(result)
    assert result.returncode == 3
    assert line == (
        f"s3regfs: error: bucket 'tls-bucket' at {endpoint}: {reason} (set skipverify=true to accept it, "
        "or AWS_CA_BUNDLE to a PEM file holding the certificate of the CA that signed it)"
    )
    assert not os.path.ismount(tmp_path / "mnt")


@pytest.mark.usefixtures("no_ca_environment")
def test_skipverify_mounts_and_warns_once(tls_endpoint: TLSEndpoint, tmp_path: Path) -> None:
    args = ["-o", f"regionendpoint={tls_endpoint.url},region=us-east-1,skipverify=true", "tls-bucket"]
    with mounted(tmp_path / "mnt", args, check_clean=False) as mount:
        for _ in range(3):
            assert (mount.path / "f").read_bytes() == b"over TLS"
        (mount.path / "g").write_bytes(b"written")
        assert sorted(os.listdir(mount.path)) == ["f", "g"]
    warnings = [line for line in mount.stderr.splitlines() if "warning" in line.lower()]
    assert warnings == [
        f"s3regfs: warning: skipverify is set: the TLS certificate of {tls_endpoint.url} is not verified"
    ], mount.stderr
    assert "InsecureRequestWarning" not in mount.stderr


@pytest.mark.usefixtures("no_ca_environment")
def test_ca_bundle_holding_the_certificate_mounts(tls_endpoint: TLSEndpoint, tmp_path: Path) -> None:
    args = ["-o", f"regionendpoint={tls_endpoint.url},region=us-east-1", "tls-bucket"]
    with mounted(tmp_path / "mnt", args, env={"AWS_CA_BUNDLE": str(tls_endpoint.cert)}) as mount:
        assert (mount.path / "f").read_bytes() == b"over TLS"


@pytest.mark.usefixtures("no_ca_environment")
@pytest.mark.parametrize(
    ("bundle", "reason"),
    [("missing.pem", "No such file or directory"), ("key.pem", "NO_CERTIFICATE_OR_CRL_FOUND")],
)
def test_unusable_ca_bundle_is_one_line(
    tls_endpoint: TLSEndpoint, tmp_path: Path, bundle: str, reason: str
) -> None:
    (tmp_path / "mnt").mkdir()
    env = {"AWS_CA_BUNDLE": str(tls_endpoint.cert.parent / bundle)}
    result = run_cli(
        ["-o", f"regionendpoint={tls_endpoint.url},region=us-east-1", "tls-bucket", str(tmp_path / "mnt")],
        env=env,
    )
    line = one_error_line(result)
    assert result.returncode == 3
    assert line.endswith(
        f": cannot load the CA bundle: {reason} (AWS_CA_BUNDLE (or ca_bundle in the AWS config) must "
        "name a PEM file of CA certificates)"
    ), line


# -- the registry's S3 policy ---------------------------------------------------------------

POLICY_BUCKET = "registry-policy"

#: The policy the registry's S3 driver documents ("S3 permission scopes").
REGISTRY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
            "Resource": f"arn:aws:s3:::{POLICY_BUCKET}",
        },
        {
            "Effect": "Allow",
            "Action": [
                "s3:PutObject",
                "s3:GetObject",
                "s3:DeleteObject",
                "s3:ListMultipartUploadParts",
                "s3:AbortMultipartUpload",
            ],
            "Resource": f"arn:aws:s3:::{POLICY_BUCKET}/*",
        },
    ],
}

READ_ONLY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{POLICY_BUCKET}"},
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{POLICY_BUCKET}/*"},
    ],
}

#: moto authorizes DeleteObjects as s3:DeleteObject on the bucket's ARN; AWS
#: authorizes each key as s3:DeleteObject on the object's ARN, which the
#: registry's policy grants.  This user adds the statement moto wants.
REGISTRY_POLICY_FOR_MOTO = {
    "Version": "2012-10-17",
    "Statement": [
        *REGISTRY_POLICY["Statement"],
        {"Effect": "Allow", "Action": ["s3:DeleteObject"], "Resource": f"arn:aws:s3:::{POLICY_BUCKET}"},
    ],
}

NO_DELETE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{POLICY_BUCKET}"},
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": f"arn:aws:s3:::{POLICY_BUCKET}/*",
        },
    ],
}

ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}

USERS = {
    "registry": REGISTRY_POLICY,
    "registry-for-moto": REGISTRY_POLICY_FOR_MOTO,
    "reader": READ_ONLY_POLICY,
    "no-delete": NO_DELETE_POLICY,
    "admin": ADMIN_POLICY,
}


class PolicyEndpoint:
    def __init__(self, server: MotoServer, keys: dict[str, dict[str, str]]) -> None:
        self.server, self.keys = server, keys

    def env(self, user: str) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.keys[user]["id"],
            "AWS_SECRET_ACCESS_KEY": self.keys[user]["secret"],
        }

    def client(self, user: str) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.server.url,
            region_name="us-east-1",
            aws_access_key_id=self.keys[user]["id"],
            aws_secret_access_key=self.keys[user]["secret"],
        )

    def args(self, *options: str) -> list[str]:
        return [
            "-o",
            ",".join([f"regionendpoint={self.server.url}", "region=us-east-1", *options]),
            POLICY_BUCKET,
        ]


#: Requests moto serves before it checks signatures and policies: the bucket,
#: then a user, its policy and its key for each user.
SETUP_REQUESTS = 1 + 3 * len(USERS)


@pytest.fixture(scope="module")
def policy_endpoint() -> Iterator[PolicyEndpoint]:
    import boto3
    import botocore.exceptions

    server = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS)})
    try:
        anyone = {
            "endpoint_url": server.url,
            "region_name": "us-east-1",
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        boto3.client("s3", **anyone).create_bucket(Bucket=POLICY_BUCKET)
        iam = boto3.client("iam", **anyone)
        keys = {}
        for user, policy in USERS.items():
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
        endpoint = PolicyEndpoint(server, keys)
        # Checks are on from here: unknown keys and missing permissions are refused.
        with pytest.raises(botocore.exceptions.ClientError, match="InvalidAccessKeyId"):
            boto3.client("s3", **anyone).list_objects_v2(Bucket=POLICY_BUCKET)
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            endpoint.client("reader").put_object(Bucket=POLICY_BUCKET, Key="x", Body=b"")
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def policy_root(policy_endpoint: PolicyEndpoint) -> Iterator[str]:
    """A fresh rootdirectory in the policy bucket, with one object."""
    root = f"root-{uuid.uuid4().hex[:8]}"
    admin = policy_endpoint.client("admin")
    admin.put_object(Bucket=POLICY_BUCKET, Key=f"{root}/existing", Body=b"stored before")
    yield root
    listed = admin.list_objects_v2(Bucket=POLICY_BUCKET, Prefix=f"{root}/").get("Contents", [])
    if listed:
        admin.delete_objects(Bucket=POLICY_BUCKET, Delete={"Objects": [{"Key": o["Key"]} for o in listed]})


def test_registry_policy_is_enough_to_read_and_write(
    policy_endpoint: PolicyEndpoint, policy_root: str, tmp_path: Path
) -> None:
    big = os.urandom(11 * MiB)  # three parts of chunksize 5 MiB
    args = policy_endpoint.args(
        f"rootdirectory=/{policy_root}", "chunksize=5242880", "multipartcopythresholdsize=5242880"
    )
    with mounted(tmp_path / "mnt", args, env=policy_endpoint.env("registry")) as mount:
        mnt = mount.path
        assert (mnt / "existing").read_bytes() == b"stored before"
        with open(mnt / "big", "wb") as f:  # a multipart upload; close() returns once it is stored
            f.write(big)
        (mnt / "small").write_bytes(b"small")
        with open(mnt / "small", "ab") as f:  # append: read, then rewritten
            f.write(b" and appended")
        (mnt / "small").rename(mnt / "renamed")  # CopyObject + DeleteObject
        (mnt / "big").rename(mnt / "big-renamed")  # a multipart copy (UploadPartCopy)
        (mnt / "dir").mkdir()
        (mnt / "dir" / "inner").write_bytes(b"inner")
        (mnt / "dir" / "gone").write_bytes(b"gone")
        (mnt / "dir" / "gone").unlink()
        (mnt / "empty").mkdir()
        (mnt / "empty").rmdir()
        (mnt / "existing").unlink()
        assert sorted(os.listdir(mnt)) == ["big-renamed", "dir", "renamed"]
    admin = policy_endpoint.client("admin")
    stored = {
        o["Key"][len(policy_root) + 1 :]: o["Size"]
        for o in admin.list_objects_v2(Bucket=POLICY_BUCKET, Prefix=f"{policy_root}/")["Contents"]
    }
    assert stored == {"big-renamed": len(big), "renamed": len(b"small and appended"), "dir/inner": 5}
    body = admin.get_object(Bucket=POLICY_BUCKET, Key=f"{policy_root}/big-renamed")["Body"].read()
    assert body == big
    assert not admin.list_multipart_uploads(Bucket=POLICY_BUCKET).get("Uploads")


def test_registry_policy_renames_a_directory(
    policy_endpoint: PolicyEndpoint, policy_root: str, tmp_path: Path
) -> None:
    args = policy_endpoint.args(f"rootdirectory=/{policy_root}")
    with mounted(tmp_path / "mnt", args, env=policy_endpoint.env("registry-for-moto")) as mount:
        (mount.path / "dir").mkdir()
        (mount.path / "dir" / "a").write_bytes(b"a")
        (mount.path / "dir").rename(mount.path / "moved")  # CopyObject each, then DeleteObjects
        assert os.listdir(mount.path / "moved") == ["a"]
    stored = policy_endpoint.client("admin").list_objects_v2(Bucket=POLICY_BUCKET, Prefix=f"{policy_root}/")
    assert sorted(o["Key"] for o in stored["Contents"]) == [
        f"{policy_root}/existing",
        f"{policy_root}/moved/a",
    ]


def test_refused_deletes_answer_eacces(
    policy_endpoint: PolicyEndpoint, policy_root: str, tmp_path: Path
) -> None:
    """DeleteObject and each key of DeleteObjects refused: EACCES, not EIO."""
    args = policy_endpoint.args(f"rootdirectory=/{policy_root}")
    with mounted(tmp_path / "mnt", args, env=policy_endpoint.env("no-delete"), check_clean=False) as mount:
        mnt = mount.path
        (mnt / "dir").mkdir()
        (mnt / "dir" / "a").write_bytes(b"a")
        with pytest.raises(PermissionError):
            (mnt / "existing").unlink()
        with pytest.raises(PermissionError):
            (mnt / "dir").rename(mnt / "moved")  # the copies are made; deleting the sources is refused
    errors = [line for line in mount.stderr.splitlines() if "error:" in line]
    assert len(errors) == 2 and all("AccessDenied" in line for line in errors), mount.stderr
    stored = policy_endpoint.client("admin").list_objects_v2(Bucket=POLICY_BUCKET, Prefix=f"{policy_root}/")
    keys = sorted(o["Key"][len(policy_root) + 1 :] for o in stored["Contents"])
    assert keys == ["dir/a", "existing", "moved/a"]  # as docs/writing.md says: both copies are left


def test_read_only_policy_mounts_read_only(
    policy_endpoint: PolicyEndpoint, policy_root: str, tmp_path: Path
) -> None:
    args = policy_endpoint.args(f"rootdirectory=/{policy_root}", "ro")
    with mounted(tmp_path / "mnt", args, env=policy_endpoint.env("reader")) as mount:
        assert os.listdir(mount.path) == ["existing"]
        assert (mount.path / "existing").read_bytes() == b"stored before"
        with pytest.raises(OSError, match="Read-only file system"):
            (mount.path / "new").write_bytes(b"x")


def test_read_only_policy_without_ro_answers_eacces(
    policy_endpoint: PolicyEndpoint, policy_root: str, tmp_path: Path
) -> None:
    """The mount cannot know what the credentials may do until it tries: each
    change is refused with EACCES by S3, logged, and the mount goes on."""
    args = policy_endpoint.args(f"rootdirectory=/{policy_root}")
    with mounted(tmp_path / "mnt", args, env=policy_endpoint.env("reader"), check_clean=False) as mount:
        mnt = mount.path
        with pytest.raises(PermissionError), open(mnt / "new", "wb") as f:
            f.write(b"x")  # stored at close(), which fails
        with pytest.raises(PermissionError):
            (mnt / "existing").unlink()
        with pytest.raises(PermissionError):
            (mnt / "existing").rename(mnt / "elsewhere")
        with pytest.raises(PermissionError), open(mnt / "existing", "ab") as f:
            f.write(b" and more")
        assert os.listdir(mnt) == ["existing"]
        assert (mnt / "existing").read_bytes() == b"stored before"
        assert mount.process.poll() is None
    errors = [line for line in mount.stderr.splitlines() if "error:" in line]
    refused = [line for line in errors if line.endswith("AccessDenied Access Denied")]
    assert re.findall(r": (\w+) s3://", "\n".join(refused)) == ["PUT", "DELETE", "CopyObject", "PUT"], errors
    assert errors == refused  # one line for each refusal, nothing else
    assert "s3regfs: error: 'new': the data written was NOT stored: PUT s3://" in refused[0]
    assert "s3regfs: error: 'existing': the data written was NOT stored: PUT s3://" in refused[3]
    stored = policy_endpoint.client("admin").list_objects_v2(Bucket=POLICY_BUCKET, Prefix=f"{policy_root}/")
    assert [o["Key"] for o in stored["Contents"]] == [f"{policy_root}/existing"]


def test_only_the_secret_values_are_blanked_in_ps(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """Secrets as short as one letter: only the values themselves become x;
    the interpreter, the bucket and the mount point are shown as typed."""
    s3.put_object(Bucket=bucket, Key="f", Body=b"data")
    options = f"regionendpoint={moto.url},region=us-east-1,accesskey=a,secretkey=b"
    with mounted(tmp_path / "mnt-ab", ["-o", options, bucket], check_clean=False) as mount:
        assert (mount.path / "f").read_bytes() == b"data"
        cmdline = Path(f"/proc/{mount.process.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    expected = [str(arg).encode() for arg in mount.process.args]  # type: ignore[union-attr]
    expected[expected.index(options.encode())] = (
        options.replace("accesskey=a", "accesskey=x").replace("secretkey=b", "secretkey=x").encode()
    )
    assert cmdline == expected
