# SPDX-License-Identifier: MIT
"""moto_server whose ranged GETs cost the range and LIST pages the page.

moto 5 reads an object's whole buffer on every access to ``FakeKey.value``
(and a ranged GET slices that copy), so a 1-byte range of a 64 MiB object
costs as much as the whole object.  Real S3 charges the range.  This launcher
keeps each object's bytes once read (memory: the objects' size, and for an
object completed from parts, its parts' bytes too, which completing reads)
and then
starts moto's own server: ``python tests/moto_ranged.py -H 127.0.0.1 -p PORT``.

moto also renders a ListObjectsV2 answer with its generic serializer, about
0.1 ms per key listed here (120 ms for a page of 1,000 keys, where S3 answers
in tens of ms): the launcher writes that XML directly (the same elements;
the keys are still found by moto's own listing).  For benchmarks against a
distant S3; the tests use plain moto_server.
"""

from __future__ import annotations

import sys
import urllib.parse
from typing import Any
from xml.sax.saxutils import escape


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


def _element(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def patch_listing() -> None:
    from moto.s3.exceptions import InvalidContinuationToken
    from moto.s3.responses import S3Response

    def list_objects_v2(self: Any) -> Any:
        query = self.querystring
        token = query.get("continuation-token", [None])[0]
        if token == "":
            raise InvalidContinuationToken()
        if query.get("fetch-owner", [None])[0]:
            return original(self)  # owners: rare, left to moto
        bucket = self.backend.get_bucket(self.bucket_name)
        prefix = self._get_querystring(self.request, self.uri).get("prefix", [None])[0]
        if isinstance(prefix, bytes):
            prefix = prefix.decode("utf-8")
        delimiter = query.get("delimiter", [None])[0]
        max_keys = int(query.get("max-keys", ["1000"])[0])
        start_after = query.get("start-after", [None])[0]
        encoding = query.get("encoding-type", [None])[0]
        found, truncated, next_token = self.backend.list_objects_v2(
            bucket=bucket,
            prefix=prefix,
            delimiter=delimiter,
            continuation_token=token,
            start_after=start_after,
            max_keys=max_keys,
        )
        keys, folders = self._split_truncated_keys(found)

        def show(text: str) -> str:
            return urllib.parse.quote(text) if encoding == "url" else text

        body = [
            '<?xml version="1.0" encoding="utf-8"?>\n'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            _element("IsTruncated", "true" if truncated else "false"),
        ]
        for key in keys:
            body.append(
                "<Contents>"
                + _element("Key", key.safe_name(encoding))
                + _element("LastModified", key.last_modified_ISO8601)
                + _element("ETag", key.etag)
                + (_element("ChecksumAlgorithm", key.checksum_algorithm) if key.checksum_algorithm else "")
                + _element("Size", key.size)
                + _element("StorageClass", key.storage_class)
                + "</Contents>"
            )
        body += [_element("Name", bucket.name), _element("Prefix", show(prefix or ""))]
        if delimiter:
            body.append(_element("Delimiter", delimiter))
        body.append(_element("MaxKeys", max_keys))
        body += [f"<CommonPrefixes>{_element('Prefix', show(folder))}</CommonPrefixes>" for folder in folders]
        if encoding:
            body.append(_element("EncodingType", encoding))
        body.append(_element("KeyCount", len(keys) + len(folders)))
        if next_token:
            body.append(_element("NextContinuationToken", next_token))
        if start_after and not token:
            body.append(_element("StartAfter", start_after))
        body.append("</ListBucketResult>")
        return 200, {"Content-Type": "application/xml", **self.response_headers}, "".join(body)

    original = S3Response.list_objects_v2
    S3Response.list_objects_v2 = list_objects_v2  # type: ignore[method-assign]


def main() -> None:
    patch()
    patch_listing()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
