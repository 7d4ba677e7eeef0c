"""Negotiated response compression: br, zstd and gzip (issue 7)."""
