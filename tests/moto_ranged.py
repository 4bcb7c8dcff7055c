# SPDX-License-Identifier: MIT
"""moto_server whose ranged GETs cost the range, not the object.

moto 5 reads an object's whole buffer on every access to ``FakeKey.value``
(and a ranged GET slices that copy), so a 1-byte range of a 64 MiB object
costs as much as the whole object.  Real S3 charges the range.  This launcher
keeps each object's bytes once read (memory: the objects' size, and for an
object completed from parts, its parts' bytes too, which completing reads)
and then
starts moto's own server: ``python tests/moto_ranged.py -H 127.0.0.1 -p PORT``.
For benchmarks of parallel ranged reads; the tests use plain moto_server.
"""

from __future__ import annotations

import sys
from typing import Any


def patch() -> None:
    from moto.s3 import models

    prop: Any = models.FakeKey.value
    read, write = prop.fget, prop.fset

    def value(self: Any) -> bytes:
        cached = self.__dict__.get("_s3regfs_bytes")
        if cached is None:
            cached = read(self)
            self.__dict__["_s3regfs_bytes"] = cached
        return bytes(cached)

    def set_value(self: Any, new_value: bytes) -> None:
        write(self, new_value)
        self.__dict__.pop("_s3regfs_bytes", None)

    models.FakeKey.value = property(value, set_value)  # type: ignore[method-assign,assignment]


def main() -> None:
    patch()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
