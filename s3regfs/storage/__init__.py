# SPDX-License-Identifier: MIT
"""Object stores: the interface (:mod:`.base`) and the S3 implementation (:mod:`.s3`)."""

from __future__ import annotations

from s3regfs.config import Config
from s3regfs.storage.base import BucketProbe, ListPage, ObjectInfo, ObjectStore, ObjectStream
from s3regfs.storage.s3 import S3Store

__all__ = [
    "BucketProbe",
    "ListPage",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStream",
    "S3Store",
    "open_store",
]


def open_store(config: Config) -> S3Store:
    """The store for *config* (builds a client; sends no request)."""
    return S3Store.create(config.driver, config.options)
