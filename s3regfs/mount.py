# SPDX-License-Identifier: MIT
"""Mounting: checks before mounting, the FUSE session, signals, shutdown.

:func:`run` is blocking and owns every lifetime: one ``trio.run`` whose
nursery holds the FUSE workers (``pyfuse3.main``), the signal handler, the
readiness probe and the readers' background tasks.  It returns 0 after a
clean unmount (``fusermount3 -u``, ``umount``, SIGTERM or SIGINT) and
raises QuietError for anything that stops it from mounting.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import logging
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping

import pyfuse3
import trio

from s3regfs.blob_cache import BlobCache
from s3regfs.blob_cache import default_size as default_cache_size
from s3regfs.config import Config
from s3regfs.control import ControlFiles
from s3regfs.errors import (
    AccessDenied,
    InvalidCredentials,
    MountpointError,
    NoSuchBucket,
    StartupError,
    StorageError,
    TemporaryFailure,
    TLSError,
    collapse_exception_groups,
)
from s3regfs.facts import RegistryFacts
from s3regfs.fs import Operations
from s3regfs.images import ImagesView
from s3regfs.inode_cache import NODE_BYTES, Namespace, Node
from s3regfs.kernel import KernelNotifier, working_directories
from s3regfs.manifest_cache import ManifestCache
from s3regfs.metrics import serve as serve_metrics
from s3regfs.open_files import KernelCache, OpenFiles, default_spooldir
from s3regfs.reader import ReadaheadBudget
from s3regfs.registry_view import RegistryView
from s3regfs.reports import Context, Reports, remove_dead_scratch
from s3regfs.storage.base import BlobReads, ObjectStore
from s3regfs.storage.cloudfront import CloudFrontReads
from s3regfs.storage.journal import (
    OpenUpload,
    UploadJournal,
    journalled_upload_ids,
    recover,
    target_name,
)
from s3regfs.storage.s3 import S3Store
from s3regfs.writer import SpoolSpace, WriteMemory

log = logging.getLogger(__name__)


def _stale_message(path: str) -> str:
    return (
        f"mount point {path} is a stale FUSE mount (Transport endpoint is not connected); "
        f"clear it with: fusermount3 -uz {path}"
    )


def check_mountpoint(path: str) -> str:
    """The absolute mount point, or MountpointError saying what is wrong with it."""
    absolute = os.path.abspath(path)
    try:
        info = os.stat(absolute)
    except FileNotFoundError:
        raise MountpointError(f"mount point {absolute} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountpointError(_stale_message(absolute)) from None
        raise MountpointError(f"mount point {absolute}: {exc.strerror}") from None
    if not os.path.isdir(absolute) or not (info.st_mode & 0o040000):
        raise MountpointError(f"mount point {absolute} is not a directory")
    if os.path.ismount(absolute):
        # stat may be answered from the kernel's attribute cache; statfs always
        # reaches the file system, so it tells a live mount from a dead one.
        try:
            os.statvfs(absolute)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                raise MountpointError(_stale_message(absolute)) from None
        raise MountpointError(f"mount point {absolute} is already mounted")
    try:
        with os.scandir(absolute) as entries:
            hidden = any(True for _ in entries)
    except OSError:
        hidden = False
    if hidden:
        # libfuse allows it; the files are still there once unmounted.
        log.warning("mount point %s is not empty: its files are hidden while mounted", absolute)
    return absolute


async def probe_bucket(store: S3Store, config: Config) -> None:
    """One cheap request: the bucket exists, the credentials work, it may be listed."""
    driver = config.driver
    where = f"bucket {driver.bucket!r} at {driver.endpoint_name}"
    try:
        probe = await store.probe(driver.key_prefix)
    except NoSuchBucket:
        raise StartupError(f"{where}: no such bucket") from None
    except InvalidCredentials as exc:
        raise StartupError(f"{where}: invalid credentials ({exc.code})") from None
    except AccessDenied:
        raise StartupError(
            f"{where}: access denied (the credentials need s3:ListBucket on the bucket)"
        ) from None
    except TLSError as exc:
        hint = (
            "AWS_CA_BUNDLE (or ca_bundle in the AWS config) must name a PEM file of CA certificates"
            if exc.bundle
            else "set skipverify=true to accept it, or AWS_CA_BUNDLE to a PEM file holding the "
            "certificate of the CA that signed it"
        )
        raise StartupError(f"{where}: {exc.reason} ({hint})") from None
    except TemporaryFailure as exc:
        reasons = {
            "EndpointConnectionError": "cannot connect",
            "ConnectTimeoutError": f"no connection within {config.options.connect_timeout:g} s",
            "ReadTimeoutError": f"no answer within {config.options.read_timeout:g} s",
        }
        reason = reasons.get(exc.code) or (
            f"HTTP {exc.status} {exc.code}".strip() if exc.status else exc.code
        )
        raise StartupError(f"{where}: endpoint unreachable or failing ({reason})") from None
    except StorageError as exc:
        raise StartupError(f"{where}: {exc}") from None
    if probe.database_in_use or config.database_enabled:
        log.warning(
            "this registry uses GitLab's metadata database: tags and repository links live "
            "in the database, not in the bucket, so _manifests and _layers may be missing here"
        )


def fuse_options(config: Config) -> set[str]:
    options = config.options
    result = {f"fsname={options.fsname}", f"subtype={options.subtype}", "noatime"}
    if options.default_permissions:
        result.add("default_permissions")
    if options.allow_other:
        result.add("allow_other")
    if options.ro:
        result.add("ro")
    return result


def sd_notify(socket_path: str, message: str) -> None:
    """Send *message* to systemd's notification socket (best effort)."""
    if not socket_path:
        return
    address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", socket_path, exc)


#: glibc's mallopt parameter for the most malloc arenas, and our value.  Read-
#: ahead chunks, part buffers and GET bodies are large bytes objects made and
#: freed on many threads; with glibc's default (eight arenas per core) the
#: freed memory stays scattered over arenas and the RSS creeps up to about twice
#: what is in use (the load test: 215 to 285 MiB over three minutes; with two
#: arenas 120 to 140 MiB, flat, at the same throughput).
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas(environ: Mapping[str, str]) -> bool:
    """Best effort (glibc only), before any worker thread exists, in every
    mount (foreground or not); a user's own MALLOC_ARENA_MAX or
    GLIBC_TUNABLES setting wins.  True if the limit was set."""
    if "MALLOC_ARENA_MAX" in environ or "arena_max" in environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_ARENA_MAX, MALLOC_ARENAS))
    log.debug("malloc arenas limited to %d: %s", MALLOC_ARENAS, done)
    return done


#: How many collections of the middle generation come before Python considers a
#: full one (its default: 10).  A full collection visits every tracked object,
#: every cached name among them: about 70 ms with the default cache full, 20
#: times in a walk of 100,000 keys (1.5 s on the loop that answers the kernel).
#: The cache's nodes form no reference cycles (a trimmed name is freed at
#: once), so what full collections find is little: a few objects per S3
#: request (botocore's response parsers), and they may wait longer.
FULL_COLLECTION_AFTER = 100


def settle_garbage_collector() -> None:
    """Called once the mount is set up: what start-up made (boto3's models,
    the configuration, the modules: some 90,000 objects that live as long as
    the process) is collected once and then left out of every later
    collection (``gc.freeze``), and full collections are rarer
    (FULL_COLLECTION_AFTER).  Measured on a 100,000-key walk: 1.5 s of
    collections become 0.1 s; the daemon's memory is the same."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)
    log.debug("garbage collector: %d start-up objects frozen", gc.get_freeze_count())


def run(config: Config, on_ready: Callable[[], None] | None = None) -> int:
    """Mount, serve until unmounted or signalled, unmount; return the exit status.

    *on_ready* is called once the mount answers requests; with
    ``$NOTIFY_SOCKET`` (systemd's Type=notify, with -f) READY=1 is sent then,
    and STOPPING=1 when the mount stops.
    """
    mountpoint = check_mountpoint(config.mountpoint)
    if ".." in config.driver.key_prefix.split("/"):
        # S3 keys have no "..": the registry's driver would use it as a name too.
        log.warning(
            "rootdirectory %r has a '..' component: S3 keys are not paths, so it names a "
            "directory called '..', not the parent",
            config.driver.rootdirectory,
        )
    limit_malloc_arenas(os.environ)
    # Only the process systemd started may notify (NotifyAccess=main): with -f.
    notify_socket = config.notify_socket if config.foreground else ""

    def ready() -> None:
        sd_notify(notify_socket, f"READY=1\nSTATUS=mounted on {mountpoint}")
        if on_ready is not None:
            on_ready()

    try:
        return trio.run(_main, config, mountpoint, ready)
    finally:
        sd_notify(notify_socket, "STOPPING=1")


def open_journal(config: Config) -> UploadJournal | None:
    """This mount's upload journal (None for a read-only mount, or when the
    state directory cannot be written: that is logged, and the mount goes on)."""
    if config.options.ro:
        return None
    directory = journal_directory(config)
    try:
        return UploadJournal(directory, journal_target(config))
    except OSError as exc:
        log.warning(
            "cannot keep the upload journal in %s (%s): multipart uploads left by a crash "
            "will not be reported; set -o statedir to a writable directory",
            directory,
            exc.strerror or exc,
        )
        return None


def journal_directory(config: Config) -> str:
    return os.path.join(config.options.statedir, "uploads")


def journal_target(config: Config) -> str:
    return target_name(config.driver.endpoint_name, config.driver.bucket)


async def recover_uploads(store: S3Store, journal: UploadJournal | None, config: Config) -> None:
    """Report (or with -o abort_stale_uploads, abort) the multipart uploads that
    earlier s3regfs processes of this bucket began and did not finish."""
    abort = config.options.abort_stale_uploads
    if config.options.ro:
        # A later read-write mount reports them; a read-only one may lack
        # s3:ListMultipartUploadParts and could not abort anyway.
        if abort:
            log.warning("abort_stale_uploads needs a read-write mount; nothing aborted")
        return
    if abort and journal is None:
        log.warning("abort_stale_uploads needs the upload journal; nothing aborted")
    found = await recover(store, journal, journal_directory(config), journal_target(config), abort=abort)

    def describe(uploads: list[OpenUpload]) -> str:
        shown = ", ".join(f"{u.key!r} (upload {u.upload_id}, begun {u.began})" for u in uploads[:10])
        return shown + (f" and {len(uploads) - 10} more" if len(uploads) > 10 else "")

    if found.aborted:
        log.info(
            "aborted %d multipart uploads left open by an earlier s3regfs: %s",
            len(found.aborted),
            describe(found.aborted),
        )
    if found.still_open:
        log.warning(
            "%d multipart uploads begun by an earlier s3regfs were left open (was it killed?): %s; "
            "no object was made from them. Mount with -o abort_stale_uploads to abort them",
            len(found.still_open),
            describe(found.still_open),
        )


async def _main(config: Config, mountpoint: str, on_ready: Callable[[], None] | None) -> int:
    journal = open_journal(config)
    try:
        store = S3Store.create(config.driver, config.options, journal)
        await probe_bucket(store, config)
        await recover_uploads(store, journal, config)
        cloudfront = None
        if config.cloudfront is not None:
            cloudfront = CloudFrontReads(store, config.cloudfront, config.options)
            log.info("blob data is read through CloudFront at %s", config.cloudfront.baseurl)
            await cloudfront.start()
        return await _serve(config, mountpoint, on_ready, store, cloudfront)
    finally:
        if journal is not None:
            journal.close()


async def _serve(
    config: Config,
    mountpoint: str,
    on_ready: Callable[[], None] | None,
    store: S3Store,
    cloudfront: CloudFrontReads | None = None,
) -> int:
    options = config.options
    readahead = ReadaheadBudget(options.readahead_total)
    write_memory = WriteMemory(options.write_memory)
    mounted = False
    operations: Operations | None = None
    # Signals are caught from before the mount exists: a SIGTERM at any moment
    # ends in a clean unmount, never in a stale mount.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1) as signals:
        try:
            # The group's one error as itself: a MountpointError stays a user error.
            with collapse_exception_groups():
                async with trio.open_nursery() as nursery:
                    operations = build_operations(
                        config,
                        store,
                        nursery,
                        readahead,
                        write_memory,
                        mountpoint=os.path.abspath(mountpoint),
                        blob_reads=cloudfront,
                    )
                    if cloudfront is not None:
                        nursery.start_soon(cloudfront.keep_fresh)
                    if options.metrics is not None:
                        host, port = options.metrics
                        try:
                            await nursery.start(serve_metrics, host, port, operations.stats)
                        except OSError as exc:
                            raise StartupError(
                                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
                            ) from None
                    try:
                        pyfuse3.init(operations, mountpoint, fuse_options(config))
                    except RuntimeError as exc:
                        raise MountpointError(f"cannot mount on {mountpoint}: {exc}") from None
                    mounted = True
                    settle_garbage_collector()
                    operations.start_busy_poll()
                    log.info(
                        "mounted s3://%s/%s on %s", config.driver.bucket, config.driver.key_prefix, mountpoint
                    )
                    nursery.start_soon(_handle_signals, signals, operations, mountpoint)
                    nursery.start_soon(_announce_ready, mountpoint, on_ready)
                    if options.statfs == "scan":
                        nursery.start_soon(_scan_usage, store, config.driver.key_prefix, operations)
                    await pyfuse3.main()
                    await operations.close_all()
                    nursery.cancel_scope.cancel()
        finally:
            if operations is not None:
                operations.registry.reports.close()
            if mounted:
                pyfuse3.close(unmount=True)
    log.info(
        "unmounted %s; read-ahead peak: %d bytes; write-memory peak: %d bytes; S3 requests: %s",
        mountpoint,
        readahead.peak,
        write_memory.peak,
        ", ".join(f"{k}={v}" for k, v in sorted(store.request_counts.items())) or "none",
    )
    return 0


#: Manifest bodies the reports keep in memory (the rest are on disk).
MANIFEST_MEMORY = 16 * 1024 * 1024


def build_operations(
    config: Config,
    store: ObjectStore,
    nursery: trio.Nursery,
    readahead: ReadaheadBudget,
    write_memory: WriteMemory,
    kernel: KernelCache | None = None,
    mountpoint: str = "",
    blob_reads: BlobReads | None = None,
) -> Operations:
    """Every collaborator of the handlers, built here and handed in.  *kernel*:
    how to make the kernel forget what it cached (FUSE notifications unless
    given: tests that drive the handlers without a kernel give their own)."""
    options = config.options
    if kernel is None:
        kernel = KernelNotifier(nursery)
    namespace = Namespace(
        store,
        config.driver.key_prefix,
        options.metadata_ttl,
        max_nodes=options.metadata_cache // NODE_BYTES,
        kernel=kernel,
        busy=(lambda: working_directories(mountpoint)) if mountpoint else None,
        nursery=nursery,
        list_ahead=options.list_ahead,
    )
    blob_cache = build_blob_cache(options.cache, options.cache_size) if options.cache else None
    files = OpenFiles(
        store,
        namespace,
        kernel,
        nursery,
        chunksize=config.driver.chunksize,
        spool=SpoolSpace(options.spooldir or default_spooldir(), options.spoolmax),
        write_memory=write_memory,
        readahead=readahead,
        max_window=options.readahead,
        max_ranges=options.read_ranges,
        parts_in_flight=options.parts_in_flight,
        verify=options.verify,
        blob_cache=blob_cache,
        blob_reads=blob_reads,
    )
    manifests = ManifestCache(store, options.cachedir or None, MANIFEST_MEMORY)
    images = ImagesView(namespace, store, options.metadata_ttl, manifests)
    control = ControlFiles.create(namespace)
    registry = RegistryView(namespace, build_reports(config, store, manifests, mountpoint))

    def synthetic(node: Node) -> bool:
        return images.owns(node) or control.owns(node) or registry.owns(node)

    facts = RegistryFacts(namespace, store, images, read_small=files.pending_bytes, synthetic=synthetic)
    return Operations(options, store, namespace, files, images, facts, control, registry)


def build_blob_cache(directory: str, size: int) -> BlobCache:
    """The -o cache directory, made if missing; StartupError in one line if it cannot be."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return BlobCache(directory, size or default_cache_size(directory))
    except OSError as exc:
        raise StartupError(f"cannot use {directory} as the blob cache: {exc.strerror or exc}") from None


def build_reports(config: Config, store: ObjectStore, manifests: ManifestCache, mountpoint: str) -> Reports:
    """The _registry view's reports: manifests cached in -o cachedir, the
    scratch database and rendered texts in the spool directory."""
    options = config.options
    driver = config.driver
    journals = journal_directory(config)
    target = journal_target(config)
    context = Context(
        source=f"s3://{driver.bucket}/{driver.key_prefix}",
        bucket=driver.bucket,
        mountpoint=mountpoint,
        purge_age=config.upload_purge_age,
        own_uploads=lambda: journalled_upload_ids(journals, target),
    )
    workdir = options.spooldir or default_spooldir()
    remove_dead_scratch(workdir)
    return Reports(store, driver.key_prefix, manifests, options.metadata_ttl, workdir, context)


#: The kernel's read-ahead for the mount, in KiB.  Its default (128) makes
#: every FUSE read 128 KiB; 1024 lets sequential reads arrive as 1 MiB requests
#: (libfuse's largest), which costs a quarter of the per-request overhead.
KERNEL_READ_AHEAD_KB = 1024


def raise_kernel_readahead(device: int) -> None:
    """Set the mount's backing-device read-ahead (root only; best effort)."""
    path = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
    try:
        with open(path) as current:
            if int(current.read()) >= KERNEL_READ_AHEAD_KB:
                return
        with open(path, "w") as setting:
            setting.write(f"{KERNEL_READ_AHEAD_KB}\n")
    except (OSError, ValueError) as exc:
        log.debug("cannot raise the kernel read-ahead (%s): %s", path, exc)


async def _announce_ready(mountpoint: str, on_ready: Callable[[], None] | None) -> None:
    # A stat of the mount point goes through our own getattr: once it returns,
    # the kernel has finished INIT and the mount answers.
    # abandon_on_cancel: if the mount stops before it answers, do not wait for
    # a stat that will never return.
    info = await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    raise_kernel_readahead(info.st_dev)
    log.debug("mount answers")
    if on_ready is not None:
        on_ready()


#: -o statfs=scan: at most this many listing pages a second, a full scan at
#: most this often.
SCAN_PAGES_PER_SECOND = 10
SCAN_INTERVAL = 300.0


async def _scan_usage(store: S3Store, prefix: str, operations: Operations) -> None:
    """Count the bytes and objects under the root in the background, rate-limited."""
    while True:
        total = count = 0
        token: str | None = None
        try:
            while True:
                page = await store.list_page(prefix, token=token)
                total += sum(info.size for info in page.objects if not info.key.endswith("/"))
                count += sum(1 for info in page.objects if not info.key.endswith("/"))
                token = page.next_token
                if token is None:
                    break
                await trio.sleep(1 / SCAN_PAGES_PER_SECOND)
        except StorageError as exc:
            log.warning("statfs scan failed (tried again later): %s", exc)
        else:
            operations.scanned_usage = (total, count)
            log.debug("statfs scan: %d bytes in %d objects", total, count)
        await trio.sleep(SCAN_INTERVAL)


async def _handle_signals(signals: AsyncIterator[int], operations: Operations, mountpoint: str) -> None:
    """SIGHUP drops the caches; SIGUSR1 logs the request accounting; SIGTERM and
    SIGINT unmount cleanly (committing open files); a second SIGINT detaches
    the mount and exits at once."""
    interrupts = 0
    async for signum in signals:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: dropping metadata caches")
            operations.drop_caches()
            continue
        if signum == signal.SIGUSR1:
            log.info("stats: %s", json.dumps(operations.stats(), sort_keys=True))
            continue
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                log.error("second SIGINT: exiting at once; data not yet stored is lost")
                subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False)
                os._exit(130)
        log.info("%s: unmounting", signal.Signals(signum).name)
        pyfuse3.terminate()
