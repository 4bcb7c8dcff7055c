# SPDX-License-Identifier: MIT
"""Big registries through the real mount, on the synthetic endpoint
(tests/synths3.py): whole-tree walks in bounded memory, names found again
after the cache dropped them, open files and kernel-held inodes kept, and the
``_images`` view costing listings, not a request per tag."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.synths3 import SynthLayout
from tests.util import SynthServer, fuse_test_marker, mounted, read_stats, start_synth, stats_when

pytestmark = fuse_test_marker()

#: Keys of the walked bucket: about 55,000 names and directories, some 40 MB
#: of daemon memory without a bound (measured), so a bound of 2 MiB shows.
WALK_KEYS = 30_000
ROOT = "docker/registry/v2"


@pytest.fixture(scope="module")
def synth() -> Iterator[SynthServer]:
    server = start_synth(WALK_KEYS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def layout() -> SynthLayout:
    return SynthLayout(WALK_KEYS)


def _options(server: SynthServer, *extra: str) -> list[str]:
    return ["-o", ",".join([f"regionendpoint={server.url}", "region=us-east-1", *extra]), server.bucket]


def _status(pid: int, field: str) -> int:
    """A /proc/PID/status figure in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _files(mount: Path) -> list[str]:
    found = subprocess.run(
        ["find", str(mount), "-type", "f", "-printf", "%P %s\n"], capture_output=True, text=True, check=False
    )
    assert found.returncode == 0 and not found.stderr, found.stderr[:2000]
    return found.stdout.splitlines()


def test_a_walk_stays_within_the_metadata_cache_and_finds_everything(
    synth: SynthServer, layout: SynthLayout, tmp_path: Path
) -> None:
    keys = list(layout.iter_keys())
    expected = sorted(f"{key} {layout.head(key).size}" for key in keys)  # type: ignore[union-attr]
    first_link = next(key for key in keys if key.endswith("/link"))
    first_blob = next(key for key in keys if key.endswith("/data"))
    with mounted(tmp_path / "m", _options(synth, "metadata_cache=2M")) as mount:
        pid = mount.process.pid
        at_start = _status(pid, "VmRSS")
        # Held open across the walk: its node must survive every trim.
        held = open(mount.path / first_link, "rb")
        try:
            held_ino = os.fstat(held.fileno()).st_ino
            assert sorted(_files(mount.path)) == expected
            stats = read_stats(mount.path)["cache"]
            # 2 MiB / 1 KiB a node; a trim leaves three quarters, one flat listing may add 16,000.
            assert stats["max_nodes"] == 2048 and stats["trims"] >= 5 and stats["evicted"] > 40_000
            assert stats["nodes"] <= 2048 + 16_000
            # The open file and the way to it at least; never more than the cache.
            assert 6 <= stats["kernel_held"] <= stats["nodes"]
            grown_mib = (_status(pid, "VmHWM") - at_start) / 1024
            # Without the bound this walk grows the daemon by about 40 MiB.
            assert grown_mib < 24, grown_mib
            # The open file: same inode, same bytes.
            assert held.read() == layout.get(first_link)
            assert os.stat(mount.path / first_link).st_ino == held_ino
        finally:
            held.close()
        # A name the bound dropped long ago is found again, with its attributes.
        assert os.stat(mount.path / first_blob).st_size == layout.head(first_blob).size  # type: ignore[union-attr]
        assert (mount.path / first_link).read_bytes() == layout.get(first_link)
        # A second walk (the kernel forgot, the daemon listed again): the same tree.
        assert sorted(_files(mount.path)) == expected
    requests = mount.request_counts()
    assert requests.get("head_object", 0) == 0 and requests.get("get_object", 0) <= 2
    # Listing everything twice, in pages (about 55 a walk without the bound, 66
    # with it, measured), never a request per repository (150) or per name.
    assert requests["list_objects_v2"] <= 2 * (2 * WALK_KEYS // 1000 + 20), requests


def test_a_walk_lists_ahead_without_costing_more_requests(
    synth: SynthServer, layout: SynthLayout, tmp_path: Path
) -> None:
    """-o list_ahead (the default): a walk finds the directories after the
    first listed already (every listing made ahead is used), in no more
    LISTs than without it; a single ``ls`` lists at most two directories
    ahead, and lookups none."""
    expected = sorted(f"{key} {layout.head(key).size}" for key in layout.iter_keys())  # type: ignore[union-attr]
    spent: dict[str, int] = {}
    for setting in ("list_ahead=0", "list_ahead"):
        before = synth.stats()["list_requests"]
        with mounted(tmp_path / setting, _options(synth, setting)) as mount:
            assert sorted(_files(mount.path)) == expected
            stats = read_stats(mount.path)["cache"]
        spent[setting] = synth.stats()["list_requests"] - before
        if setting == "list_ahead=0":
            assert stats["lists_ahead"] == 0
        else:
            # One namespace after another (and the blob store's chunks).
            assert stats["lists_ahead"] >= layout.counts()["namespaces"] - 1, stats
            assert stats["lists_ahead_used"] == stats["lists_ahead"], stats
    assert spent["list_ahead"] <= spent["list_ahead=0"], spent
    with mounted(tmp_path / "ls", _options(synth)) as mount:
        # Lookups (stat of a path) never list ahead: they come from anywhere.
        repository = layout.repository_names()[0]
        assert (mount.path / ROOT / "repositories" / repository / "_layers").is_dir()
        stats = read_stats(mount.path)["cache"]
        assert stats["lists_ahead"] == 0 and stats["misses"] > 0, stats
        namespace = sorted(os.listdir(mount.path / ROOT / "repositories"))[1]
        assert os.listdir(mount.path / ROOT / "repositories" / namespace)
        # In the background: it starts when the request loop lets it.
        stats_when(mount.path, lambda stats: stats["cache"]["lists_ahead"] > 0, 10)
        time.sleep(0.5)  # and what it may go on to
        stats = read_stats(mount.path)["cache"]
        assert 1 <= stats["lists_ahead"] <= 2, stats


def test_images_walk_costs_a_listing_per_repository(
    synth: SynthServer, layout: SynthLayout, tmp_path: Path
) -> None:
    counts = layout.counts()
    before = synth.stats()
    # The synthetic endpoint's manifest digests are drawn, not hashed: reading
    # them (index.json below) logs that they do not match, once each.
    with mounted(tmp_path / "m", _options(synth, "metadata_ttl=5"), check_clean=False) as mount:
        found = subprocess.run(
            ["find", str(mount.path / "_images"), "-maxdepth", "3"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert found.returncode == 0 and not found.stderr, found.stderr[:2000]
        entries = [line[len(str(mount.path)) + 1 :] for line in found.stdout.splitlines()]
        names = layout.repository_names()
        assert {e for e in entries if e.count("/") == 2} == {f"_images/{name}" for name in names}
        assert sorted(e for e in entries if e.endswith("/index.json")) == sorted(
            f"_images/{name}/index.json" for name in names
        )
        walked = synth.stats()
        # index.json of one repository, read: one descriptor per tag.
        name = names[3]
        tags_prefix = f"{ROOT}/repositories/{name}/_manifests/tags/"
        tags = set()
        for key in layout.iter_keys(tags_prefix):
            if not key.startswith(tags_prefix):
                break
            tags.add(key[len(tags_prefix) :].split("/")[0])
        index = json.loads((mount.path / "_images" / name / "index.json").read_bytes())
        assert sorted(
            m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]
        ) == sorted(tags)
    warnings = [line for line in mount.stderr.splitlines() if ": warning: " in line]
    assert all("content does not match its digest" in line for line in warnings), warnings[:5]
    assert len(warnings) == len(set(warnings))  # once per manifest
    lists = walked["list_requests"] - before["list_requests"]
    gets = walked["get_requests"] - before["get_requests"]
    heads = walked["head_requests"] - before["head_requests"]
    # The walk: at most a listing per repository and namespace, never a
    # request per tag or per blob (a moved tag's current/link is read only
    # when its target is needed: index.json below).
    assert lists <= counts["repositories"] + counts["namespaces"] + 10, lists
    assert heads == 0 and gets == 0, (heads, gets)


def test_a_wide_directory_streams_in_bounded_memory(tmp_path: Path) -> None:
    # _uploads of the first repository: 25 pages of its own children, more
    # than its flat listings (the repository's, then its own from where that
    # one was cut: 8,000 keys each) and 8 delimited pages take in.
    uploads = 25_000
    layout = SynthLayout(2_000, wide_uploads=uploads)
    repository = layout.repository_names()[0]
    prefix = f"{ROOT}/repositories/{repository}/_uploads/"
    expected = sorted(
        {key[len(prefix) :].split("/")[0] for key in layout.iter_keys(prefix) if key.startswith(prefix)}
    )
    assert len(expected) == uploads
    server = start_synth(2_000, wide_uploads=uploads)
    try:
        with mounted(tmp_path / "m", _options(server, "metadata_cache=2M")) as mount:
            wide = mount.path / ROOT / "repositories" / repository / "_uploads"
            # The first time: found wide after its flat and 8 delimited pages, then streamed.
            with os.scandir(wide) as entries:
                names = [entry.name for entry in entries]
            assert sorted(names) == expected and len(names) == len(set(names))
            # Known wide now: streamed from the first page, every name once.
            fd = os.open(wide, os.O_RDONLY | os.O_DIRECTORY)
            try:
                lists = server.stats()["list_requests"]
                with os.scandir(fd) as entries:
                    first = next(entries).name
                    assert server.stats()["list_requests"] - lists == 1  # shown after one page
                    names = [first, *(entry.name for entry in entries)]
            finally:
                os.close(fd)
            assert sorted(names) == expected and len(names) == len(set(names))
            assert server.stats()["list_requests"] - lists <= uploads // 1000 + 2
            # A name in it: one small listing, with its attributes.
            one = expected[uploads // 2]
            assert (wide / one / "data").stat().st_size == layout.head(prefix + one + "/data").size  # type: ignore[union-attr]
            # The kernel's FORGETs for the invalidated names arrive on its own
            # time (later on a loaded machine): wait for them, within bounds.
            stats = stats_when(
                mount.path,
                lambda stats: (
                    stats["cache"]["evicted"] > uploads
                    and stats["cache"]["nodes"] <= uploads + stats["cache"]["max_nodes"]
                ),
                30,
                0.2,
            )["cache"]
            assert stats["trims"] >= 1 and stats["evicted"] > uploads, stats
            # readdirplus hands every name to the kernel, which holds it until
            # it forgets it: the daemon keeps those nodes (and no more than the
            # bound besides), never the listing itself.
            assert stats["nodes"] <= uploads + stats["max_nodes"], stats
    finally:
        server.stop()
