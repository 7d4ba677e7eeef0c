"""Response caching: an RFC 9111 shared cache (issue 6)."""
