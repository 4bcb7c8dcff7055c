# SPDX-License-Identifier: MIT
"""s3regfs: a FUSE file system over the S3 storage of a container registry."""

__version__ = "0.1.0"
