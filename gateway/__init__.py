"""An HTTP edge gateway: routing, a lean pooled upstream transport and per-route stages."""

__version__ = "0.1.0"
