# SPDX-License-Identifier: MIT
"""``python -m s3regfs``: the same entry point as the ``s3regfs`` command."""

from s3regfs.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
