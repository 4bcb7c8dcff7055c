# SPDX-License-Identifier: MIT
"""The figures of ``.s3regfs/stats`` as Prometheus metrics (OpenMetrics text).

Served as the file ``MOUNT/.s3regfs/metrics`` (for node_exporter's textfile
collector, or ``cat``) and, with ``-o metrics=HOST:PORT``, over HTTP at
``http://HOST:PORT/metrics``.  prometheus_client renders the text (the format
Prometheus users expect, escaping included); the figures are read from the
mount's own counters at every scrape, so nothing is counted twice.  The HTTP
server is a trio task in the mount's nursery, not a thread of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)

#: What the handlers' stats() returns (see fs.Operations.stats).
Stats = Callable[[], Mapping[str, object]]

#: Counters of the stats' "cache" figures: metric name (without _total), key, help.
_CACHE_COUNTERS = (
    ("s3regfs_metadata_cache_hits", "hits", "lookups and listings answered from the cache"),
    ("s3regfs_metadata_cache_misses", "misses", "lookups and listings that asked S3"),
    (
        "s3regfs_metadata_cache_evicted",
        "evicted",
        "cached names dropped to keep the cache within metadata_cache",
    ),
)
#: Counters of the stats' "blob_cache" figures (-o cache): name (without _total), key, help.
_BLOB_CACHE_COUNTERS = (
    ("s3regfs_blob_cache_hits", "hits", "blob opens served from the local cache"),
    ("s3regfs_blob_cache_misses", "misses", "blob opens the local cache could not serve"),
    ("s3regfs_blob_cache_fills", "fills", "blobs added to the local cache"),
    ("s3regfs_blob_cache_filled_bytes", "bytes_filled", "bytes added to the local cache"),
    ("s3regfs_blob_cache_served_bytes", "bytes_served", "bytes read from the local cache"),
    ("s3regfs_blob_cache_fill_failures", "fill_failures", "cache fills the disk refused"),
    (
        "s3regfs_blob_cache_verification_failures",
        "verification_failures",
        "cached blobs that no longer matched their digest (-o verify)",
    ),
    ("s3regfs_blob_cache_evictions", "evictions", "cached blobs removed to stay within cache_size"),
)
#: Counters of the stats' "cloudfront" figures: name (without _total), key, help.
_CLOUDFRONT_COUNTERS = (
    ("s3regfs_cloudfront_requests", "requests", "ranged GETs of blob data sent to CloudFront"),
    ("s3regfs_cloudfront_received_bytes", "bytes", "bytes of blob data read from CloudFront"),
    ("s3regfs_cloudfront_fallbacks", "fallbacks", "reads CloudFront did not serve that went on from S3"),
    (
        "s3regfs_cloudfront_pauses",
        "pauses",
        "times CloudFront was left alone for a while after failures in a row",
    ),
    (
        "s3regfs_cloudfront_digest_failures",
        "digest_failures",
        "blobs from CloudFront that failed their digest",
    ),
)
#: Counters of the stats' "reports" manifest figures: name (without _total), key, help.
_MANIFEST_COUNTERS = (
    ("s3regfs_report_manifests_fetched", "fetched", "manifests the reports read from S3"),
    ("s3regfs_report_manifests_disk_hits", "disk_hits", "manifests the reports read from cachedir"),
)
#: Counters: metric name (without _total), key in the stats, help.
_COUNTERS = (
    ("s3regfs_retries", "retries", "S3 request attempts retried"),
    ("s3regfs_request_errors", "errors", "S3 requests that failed for good (after retries)"),
    ("s3regfs_received_bytes", "bytes_in", "bytes read from S3"),
    ("s3regfs_sent_bytes", "bytes_out", "bytes written to S3"),
    ("s3regfs_parallel_reads", "parallel_reads", "sequential reads that turned to parallel ranged GETs"),
    ("s3regfs_read_ranges", "read_ranges", "ranged GETs of parallel reads"),
)
#: Gauges: metric name, key in the stats, help.
_GAUGES = (
    ("s3regfs_open_files", "open_files", "files open through the mount"),
    ("s3regfs_uploads_in_flight", "open_uploads", "multipart uploads open in S3"),
    ("s3regfs_files_being_written", "files_being_written", "files with a writer"),
    ("s3regfs_readahead_bytes", "readahead_bytes", "read-ahead memory held"),
    ("s3regfs_write_memory_bytes", "write_memory_bytes", "part-upload memory held"),
)


def _number(value: object) -> float:
    return float(cast(float, value)) if isinstance(value, int | float) else 0.0


class StatsCollector(Collector):
    """Reads the mount's figures at every collection."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        figures = self._stats()
        requests = CounterMetricFamily(
            "s3regfs_requests",
            "S3 request attempts by operation and outcome",
            labels=["operation", "outcome"],
        )
        outcomes = figures.get("outcomes")
        for key, count in outcomes.items() if isinstance(outcomes, dict) else []:
            operation, _, outcome = str(key).partition(" ")
            requests.add_metric([operation, outcome], _number(count))
        yield requests
        yield from _counters(_COUNTERS, figures)
        cache = figures.get("cache")
        cache = cache if isinstance(cache, dict) else {}
        yield from _counters(_CACHE_COUNTERS, cache)
        yield GaugeMetricFamily(
            "s3regfs_metadata_cache_nodes",
            "names and directories cached now",
            value=_number(cache.get("nodes")),
        )
        yield GaugeMetricFamily(
            "s3regfs_metadata_cache_kernel_held",
            "cached names the kernel holds now (looked up, not forgotten yet)",
            value=_number(cache.get("kernel_held")),
        )
        for name, key, text in _GAUGES:
            yield GaugeMetricFamily(name, text, value=_number(figures.get(key)))
        blob_cache = figures.get("blob_cache")
        if isinstance(blob_cache, dict):
            yield from _counters(_BLOB_CACHE_COUNTERS, blob_cache)
            yield GaugeMetricFamily(
                "s3regfs_blob_cache_bytes",
                "bytes in the local blob cache",
                value=_number(blob_cache.get("size")),
            )
        cloudfront = figures.get("cloudfront")
        if isinstance(cloudfront, dict):
            yield from _counters(_CLOUDFRONT_COUNTERS, cloudfront)
        reports = figures.get("reports")
        manifests = reports.get("manifests") if isinstance(reports, dict) else None
        if isinstance(manifests, dict):
            yield from _counters(_MANIFEST_COUNTERS, manifests)


def _counters(
    table: tuple[tuple[str, str, str], ...], figures: Mapping[Any, object]
) -> list[CounterMetricFamily]:
    """One counter per (name, key in *figures*, help) row of *table*."""
    return [CounterMetricFamily(name, text, value=_number(figures.get(key))) for name, key, text in table]


def render(stats: Stats) -> bytes:
    """The OpenMetrics text of *stats* now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    return bytes(generate_latest(registry))  # type: ignore[no-untyped-call]  # untyped upstream


async def serve(
    host: str, port: int, stats: Stats, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer ``GET /metrics`` on HOST:PORT until cancelled (one request per
    connection, a few KiB of request read at most)."""

    async def answer(stream: trio.SocketStream) -> None:
        # A scraper that resets the connection must not end the mount (an
        # error here would cancel the nursery every task of the mount runs in).
        try:
            await respond(stream)
        except (trio.BrokenResourceError, OSError) as exc:
            log.debug("metrics request ended early: %s", exc)

    async def respond(stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            with trio.move_on_after(10):
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    request += data
            line = request.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                body = render(stats)
                head = f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
            else:
                body = b"not found: try /metrics\n"
                head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            await stream.send_all(head.encode() + body)

    listeners = await trio.open_tcp_listeners(port, host=host)
    log.info("metrics at http://%s:%d/metrics", host, port)
    task_status.started()
    await trio.serve_listeners(answer, listeners)
