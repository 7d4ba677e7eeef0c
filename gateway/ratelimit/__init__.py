"""Per-client rate limiting (issue 5): GCRA token buckets and the `limits` windows."""
