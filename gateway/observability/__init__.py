"""Logs (and, later, metrics) about what the gateway does."""
