# SPDX-License-Identifier: MIT
"""The s3regfs error tree.

Every error s3regfs raises on purpose derives from :class:`S3RegFSError`::

    S3RegFSError
    ├── QuietError                user error: one line, an exit code, no traceback
    │   ├── ConfigError           a bad parameter, option or config file (exit 2)
    │   ├── StartupError          the bucket or endpoint cannot be used (exit 3)
    │   └── MountpointError       the mount point cannot be used (exit 4)
    ├── SpoolFull                 no room in the local spool (spoolmax, or a full disk)
    ├── KeyTooLong                a key would be over S3's 1,024 bytes (nothing was sent)
    ├── StaleHandle               an open file's object changed or vanished after it was read
    ├── Unsupported               not something the registry's objects can do (ENOTSUP)
    ├── WriteLost                 an open file's pending data will not be stored:
    │                             a write, truncate or commit of it failed (*cause*)
    └── StorageError              a failed S3 request, after retries
        ├── NotFound              no such key (404 NoSuchKey)
        │   └── NoSuchBucket
        ├── AccessDenied          403: the credentials lack a permission
        │   └── InvalidCredentials   unknown key id or bad signature
        ├── PreconditionFailed    the object changed under an open reader (412)
        ├── InvalidRange          a range past the end of the object (416)
        ├── IntegrityError        a blob's bytes do not hash to its digest (-o verify)
        ├── TLSError              the endpoint's certificate is not trusted, or the CA bundle is unusable
        ├── TemporaryFailure      5xx, 429/SlowDown, connection errors and timeouts
        └── RequestFailed         any other refusal (4xx)

The storage layer translates botocore's exceptions into this tree (and only it
sees botocore); ``fs.py`` translates this tree into errno values; ``cli.py``
turns a :class:`QuietError` into its one line and exit code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

EXIT_CONFIG = 2
EXIT_STARTUP = 3
EXIT_MOUNTPOINT = 4


class S3RegFSError(Exception):
    """Base of every error s3regfs raises on purpose."""


class QuietError(S3RegFSError):
    """A user error: printed as one line, with *exitcode*, never a traceback."""

    def __init__(self, message: str, exitcode: int = 1) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class ConfigError(QuietError):
    """A parameter, option or configuration file is invalid."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_CONFIG)


class StartupError(QuietError):
    """The bucket, endpoint or credentials cannot be used to mount."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_STARTUP)


class MountpointError(QuietError):
    """The mount point is missing, not a directory, or already mounted."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_MOUNTPOINT)


class SpoolFull(S3RegFSError):
    """The spool has no room (spoolmax reached, or the disk is full)."""


class KeyTooLong(S3RegFSError):
    """A key the operation needs would be over S3's limit; nothing was sent."""


class StaleHandle(S3RegFSError):
    """The object of an open file changed or was deleted after the handle
    returned bytes of it: reading on would mix versions (ESTALE)."""


class Unsupported(S3RegFSError):
    """An operation the registry's objects do not support (an unknown digest
    algorithm to verify, metadata S3 objects of the registry do not carry)."""


class WriteLost(S3RegFSError):
    """The data written to an open file will never be stored.

    Raised by every write, truncate and commit of a file once one of them has
    failed (*cause*: the first failure, a :class:`SpoolFull` or a
    :class:`StorageError`): the object in S3 stays as it was before the file
    was opened for writing (or after its last successful commit), and no later
    close or fsync may change it to a state a writer was told had failed.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the data written will NOT be stored: {cause}")
        self.cause = cause


class StorageError(S3RegFSError):
    """An S3 request failed for good (after the retries it was allowed).

    *code* is the S3 error code (``NoSuchKey``, ``SlowDown``…) or a short
    description of a transport failure; *status* the HTTP status when known.
    """

    def __init__(self, message: str, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class NotFound(StorageError):
    """The key (or bucket) does not exist."""


class NoSuchBucket(NotFound):
    """The bucket does not exist."""


class AccessDenied(StorageError):
    """The request was refused for lack of permission."""


class InvalidCredentials(AccessDenied):
    """The access key is unknown or the signature does not match."""


class PreconditionFailed(StorageError):
    """An ``If-Match`` condition failed: the object changed."""


class InvalidRange(StorageError):
    """The requested range starts past the end of the object."""


class IntegrityError(StorageError):
    """A blob's content does not match the digest it is stored under."""


class TLSError(StorageError):
    """TLS verification failed for good: the endpoint's certificate is not
    trusted (self-signed, unknown CA, wrong name), or the CA bundle cannot be
    read.  Not retried: the next attempt would fail the same way.  *reason*
    is the short cause, without the request; *bundle* says the CA bundle is
    at fault, not the certificate."""

    def __init__(self, message: str, *, reason: str, bundle: bool = False) -> None:
        super().__init__(message, code="TLSError")
        self.reason = reason
        self.bundle = bundle


@contextmanager
def collapse_exception_groups() -> Iterator[None]:
    """Re-raise the error that matters of a nursery's exception group as
    itself, so each boundary translates it as it would translate it alone:
    the first :class:`StorageError` among the group's leaves, else its first
    leaf (trio groups every error of a nursery)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves: list[BaseException] = []
        stack: list[BaseException] = [group]
        while stack:
            each = stack.pop()
            if isinstance(each, BaseExceptionGroup):
                stack.extend(reversed(each.exceptions))
            else:
                leaves.append(each)
        first = next((e for e in leaves if isinstance(e, StorageError)), leaves[0])
        raise first from group


class TemporaryFailure(StorageError):
    """A failure that may go away: 5xx, 429, SlowDown, resets and timeouts."""


class RequestFailed(StorageError):
    """Any other refusal by the endpoint."""
