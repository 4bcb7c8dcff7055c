# SPDX-License-Identifier: MIT
"""Object stores: the interface the file system is written against
(:mod:`.base`), its S3 implementation (:mod:`.s3`, the only module that
imports boto3; built by ``mount.py`` alone), blob data through the registry's
CloudFront in front of it (:mod:`.cloudfront`, which signs URLs with
botocore's CloudFrontSigner) and the upload journal (:mod:`.journal`)."""

from __future__ import annotations

from s3regfs.storage.base import (
    KEY_MAX,
    BucketProbe,
    ListPage,
    MultipartUpload,
    ObjectInfo,
    ObjectStore,
    ObjectStream,
)

__all__ = [
    "KEY_MAX",
    "BucketProbe",
    "ListPage",
    "MultipartUpload",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStream",
]
