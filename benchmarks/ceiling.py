# SPDX-License-Identifier: MIT
"""The ceiling of a directory walk through FUSE on this machine: how fast
``find -ls`` can walk a tree when the file system does nothing but answer.

    .venv/bin/python benchmarks/ceiling.py [--dirs 100] [--leaves 500]

Serves the same tree from memory (DIRS directories of LEAVES directories
holding one file each, the shape of a registry's digest directories) with
two minimal file systems, and walks it with ``find -ls`` on a fresh mount:

- a C file system on libfuse's own loop (compiled here with gcc), with
  ``find`` free to run on any CPU, then with both pinned to one CPU, then
  on a loop that polls for the next request for 50 us before it sleeps;
- a pyfuse3 file system on trio, as s3regfs runs (no OPENDIR, readdirplus),
  waiting for every request in trio's loop, then polling for the next
  request for 50 us (the pyfuse3 patch behind ``-o busy_poll``).

It prints, for each: lines, seconds, lines per second, microseconds per
directory (a walk costs two READDIRPLUS per directory), and the daemon's CPU
seconds.  No S3, no network; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import errno
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import Running, cpu_seconds, machine, wait_mounted  # noqa: E402  (benchmarks/bench.py, beside this file)

C_SOURCE = r"""
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Inode 1 is the root; 2..DIRS+1 its directories; from BASE on, pairs of
   (leaf directory, its file "link"). */
static long DIRS, LEAVES, BASE;

static int is_dir(fuse_ino_t ino) { return ino < (fuse_ino_t)BASE || (ino - BASE) % 2 == 0; }

static void entry_of(fuse_ino_t ino, struct fuse_entry_param *e) {
    memset(e, 0, sizeof *e);
    e->ino = ino;
    e->attr_timeout = e->entry_timeout = 300;
    e->attr.st_ino = ino;
    e->attr.st_nlink = 1;
    e->attr.st_mode = is_dir(ino) ? (S_IFDIR | 0755) : (S_IFREG | 0644);
    e->attr.st_size = is_dir(ino) ? 0 : 71;
}

static void name_of(fuse_ino_t ino, char *name) {
    if (ino < (fuse_ino_t)BASE)
        sprintf(name, "d%03ld", (long)ino - 2);
    else if (is_dir(ino))
        sprintf(name, "%060lx", (long)(ino - BASE) / 2);
    else
        strcpy(name, "link");
}

/* The index-th child of a directory, 0 past the last. */
static fuse_ino_t child(fuse_ino_t ino, long index) {
    if (ino == 1)
        return index < DIRS ? 2 + index : 0;
    if (ino < (fuse_ino_t)BASE)
        return index < LEAVES ? BASE + 2 * ((ino - 2) * LEAVES + index) : 0;
    return index == 0 ? ino + 1 : 0;
}

static void do_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    char found[80];
    struct fuse_entry_param e;
    for (long i = 0; child(parent, i); i++) {
        name_of(child(parent, i), found);
        if (!strcmp(found, name)) {
            entry_of(child(parent, i), &e);
            fuse_reply_entry(req, &e);
            return;
        }
    }
    fuse_reply_err(req, ENOENT);
}

static void do_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct fuse_entry_param e;
    (void)fi;
    entry_of(ino, &e);
    fuse_reply_attr(req, &e.attr, 300);
}

static void do_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino; (void)fi;
    fuse_reply_err(req, ENOSYS); /* no OPENDIR from now on, as s3regfs */
}

static void do_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi) {
    char *buf = malloc(size), name[80];
    size_t used = 0;
    struct fuse_entry_param e;
    (void)fi;
    for (long i = off; child(ino, i); i++) {
        name_of(child(ino, i), name);
        entry_of(child(ino, i), &e);
        size_t n = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, i + 1);
        if (n > size - used)
            break;
        used += n;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void do_init(void *data, struct fuse_conn_info *conn) {
    (void)data;
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
}

static const struct fuse_lowlevel_ops ops = {
    .init = do_init, .lookup = do_lookup, .getattr = do_getattr,
    .opendir = do_opendir, .readdirplus = do_readdirplus,
};

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* libfuse's loop, except that after each request it polls for the next one
   for up to poll_ns before it sleeps in poll(2). */
static void polling_loop(struct fuse_session *se, long long poll_ns) {
    struct fuse_buf buf = {0};
    int fd = fuse_session_fd(se);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (!fuse_session_exited(se)) {
        long long start = now_ns();
        int res;
        while ((res = fuse_session_receive_buf(se, &buf)) == -EAGAIN && now_ns() - start < poll_ns)
            ;
        if (res == -EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            poll(&p, 1, -1);
            continue;
        }
        if (res <= 0 && res != -EINTR)
            break;
        if (res > 0)
            fuse_session_process_buf(se, &buf);
    }
    free(buf.mem);
}

int main(int argc, char **argv) {
    char *fuse_argv[] = {argv[0]};
    struct fuse_args args = FUSE_ARGS_INIT(1, fuse_argv);
    if (argc != 5)
        return 2;
    DIRS = atol(argv[2]);
    LEAVES = atol(argv[3]);
    BASE = DIRS + 2;
    long long poll_ns = atoll(argv[4]) * 1000;
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!se || fuse_session_mount(se, argv[1]))
        return 1;
    if (poll_ns)
        polling_loop(se, poll_ns);
    else
        fuse_session_loop(se);
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return 0;
}
"""


def serve_python(mountpoint: str, dirs: int, leaves: int, poll_us: int) -> None:
    """The same tree from a pyfuse3 file system (no OPENDIR, readdirplus)."""
    import pyfuse3
    import trio

    base = dirs + 2

    def is_dir(ino: int) -> bool:
        return ino < base or (ino - base) % 2 == 0

    def name_of(ino: int) -> bytes:
        if ino < base:
            return b"d%03d" % (ino - 2)
        return b"%060x" % ((ino - base) // 2) if is_dir(ino) else b"link"

    def child(ino: int, index: int) -> int:
        if ino == 1:
            return 2 + index if index < dirs else 0
        if ino < base:
            return base + 2 * ((ino - 2) * leaves + index) if index < leaves else 0
        return ino + 1 if index == 0 else 0

    def attributes(ino: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = pyfuse3.InodeT(ino)
        attrs.st_mode = pyfuse3.ModeT((stat.S_IFDIR | 0o755) if is_dir(ino) else (stat.S_IFREG | 0o644))
        attrs.st_size = 0 if is_dir(ino) else 71
        attrs.st_nlink = 1
        attrs.entry_timeout = attrs.attr_timeout = 300
        return attrs

    class Tree(pyfuse3.Operations):
        async def getattr(
            self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
        ) -> pyfuse3.EntryAttributes:
            return attributes(inode)

        async def lookup(
            self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
        ) -> pyfuse3.EntryAttributes:
            index = 0
            while child(parent_inode, index):
                if name_of(child(parent_inode, index)) == name:
                    return attributes(child(parent_inode, index))
                index += 1
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
            raise pyfuse3.FUSEError(errno.ENOSYS)

        async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
            index = start_id
            while child(fh, index):  # fh is the inode (the patched pyfuse3, no OPENDIR)
                entry = child(fh, index)
                if not pyfuse3.readdir_reply(
                    token, pyfuse3.FileNameT(name_of(entry)), attributes(entry), index + 1
                ):
                    return
                index += 1

    async def run() -> None:
        pyfuse3.init(Tree(), mountpoint, set(pyfuse3.default_options) | {"fsname=ceiling"})
        set_busy_poll = getattr(pyfuse3, "set_busy_poll", None)
        if poll_us and set_busy_poll is not None:
            set_busy_poll(poll_us * 1000)
        try:
            await pyfuse3.main()
        finally:
            pyfuse3.close()

    trio.run(run)


def walk(
    label: str, daemon_command: list[str], mountpoint: Path, directories: int, find_cpu: int | None
) -> None:
    daemon = subprocess.Popen(daemon_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running = Running(label, daemon, mountpoint, ["fusermount3", "-u"])
    try:
        wait_mounted(running)
        find = ["find", str(mountpoint), "-ls"]
        if find_cpu is not None:
            find = ["taskset", "-c", str(find_cpu), *find]
        cpu_before = cpu_seconds(daemon.pid)
        started = time.perf_counter()
        done = subprocess.run(find, capture_output=True, check=True)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(daemon.pid) - cpu_before
        lines = done.stdout.count(b"\n")
        print(
            f"{label}: {lines} lines, {elapsed:.2f} s, {lines / elapsed:,.0f} lines/s, "
            f"{elapsed / directories * 1e6:.0f} us per directory, daemon CPU {cpu:.2f} s",
            flush=True,
        )
    finally:
        running.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--leaves", type=int, default=500)
    parser.add_argument("--serve-python", nargs=2, metavar=("MOUNTPOINT", "POLL_US"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_python:
        serve_python(args.serve_python[0], args.dirs, args.leaves, int(args.serve_python[1]))
        return 0
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"machine: {machine()}")
    print(f"tree: {args.dirs} directories of {args.leaves} directories holding one file each")
    workdir = Path(tempfile.mkdtemp(prefix="s3regfs-ceiling-"))
    try:
        source = workdir / "tree.c"
        source.write_text(C_SOURCE)
        flags = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True, check=True
        ).stdout.split()
        program = workdir / "tree"
        subprocess.run(["gcc", "-O2", "-o", str(program), str(source), *flags], check=True)
        mountpoint = workdir / "mnt"
        mountpoint.mkdir()
        size = [str(args.dirs), str(args.leaves)]
        c_tree = [str(program), str(mountpoint), *size, "0"]
        directories = 1 + args.dirs + args.dirs * args.leaves
        walk("C, libfuse's loop, find on any CPU", c_tree, mountpoint, directories, None)
        walk("C, libfuse's loop, both on CPU 0", ["taskset", "-c", "0", *c_tree], mountpoint, directories, 0)
        c_polling = [*c_tree[:-1], "50"]
        walk("C, polling 50 us, find on any CPU", c_polling, mountpoint, directories, None)
        python = [
            sys.executable,
            __file__,
            "--dirs",
            size[0],
            "--leaves",
            size[1],
            "--serve-python",
            str(mountpoint),
        ]
        walk("pyfuse3 on trio, every request waited for", [*python, "0"], mountpoint, directories, None)
        walk("pyfuse3 on trio, polling 50 us (busy_poll)", [*python, "50"], mountpoint, directories, None)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
