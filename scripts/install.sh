#!/usr/bin/env bash
# Install s3regfs and everything its tests and demo use, on Debian, as root:
# Debian packages (FUSE 3 and its headers for pyfuse3, the registry and skopeo
# for the end-to-end tests, attr for getfattr, the system python3 that the
# tests run as an unprivileged user), a virtual environment in .venv,
# and an `s3regfs` launcher in /usr/local/bin for mount(8) and systemd.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
python=${PYTHON:-python3}

export DEBIAN_FRONTEND=noninteractive
packages=(fuse3 libfuse3-dev pkg-config gcc patch attr docker-registry skopeo umoci findutils rsync util-linux ca-certificates python3-minimal passwd)
if ! "$python" -c 'import venv, ensurepip, sysconfig, os; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null; then
    packages+=(python3-venv python3-dev)
fi
command -v systemd-analyze >/dev/null || packages+=(systemd)
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

# pyfuse3 rebuilt from its PyPI source with scripts/patches/ applied: readdir
# without opendir (the kernel then caches directory contents; docs/design.md,
# "Directory reads"), and a request loop that polls for the next request
# (docs/design.md, "The request loop").  s3regfs runs on an unpatched pyfuse3
# too, slower.
pyfuse3_version=3.5.0
pyfuse3_patches=(readdir-inode busy-poll)
if ! .venv/bin/python -c 'import pyfuse3, sys; sys.exit(not (getattr(pyfuse3, "READDIR_INODE_WITHOUT_OPENDIR", False) and hasattr(pyfuse3, "set_busy_poll")))' 2>/dev/null; then
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    .venv/bin/python -m pip download -q --no-deps --no-binary pyfuse3 "pyfuse3==$pyfuse3_version" -d "$build"
    tar -xzf "$build/pyfuse3-$pyfuse3_version.tar.gz" -C "$build"
    for name in "${pyfuse3_patches[@]}"; do
        patch --batch --forward --silent -p0 -d "$build/pyfuse3-$pyfuse3_version" \
            -i "$repo/scripts/patches/pyfuse3-$pyfuse3_version-$name.patch"
    done
    .venv/bin/python -m pip install -q --no-deps --force-reinstall "$build/pyfuse3-$pyfuse3_version"
    .venv/bin/python -c 'import pyfuse3; assert pyfuse3.READDIR_INODE_WITHOUT_OPENDIR and pyfuse3.set_busy_poll'
fi

launcher=/usr/local/bin/s3regfs
cat > "$launcher.tmp" <<LAUNCHER
#!/bin/sh
# s3regfs launcher: mount(8), mount.fuse3 and systemd do not see a virtual environment.
exec "$repo/.venv/bin/python" -m s3regfs "\$@"
LAUNCHER
chmod 755 "$launcher.tmp"
mv "$launcher.tmp" "$launcher"
echo "s3regfs installed: $("$launcher" --version) ($launcher -> $repo/.venv)"
