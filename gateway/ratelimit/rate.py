"""Rate strings as the `limits` library writes them: ``100/second``, ``10 per 5 minutes``."""

from __future__ import annotations

import limits

from gateway.config.model import Rate


def parse_rate(text: str) -> Rate:
    """Parse one rate; ValueError with a readable message when it is not one."""
    try:
        items = limits.parse_many(text)
    except ValueError:
        raise ValueError(
            f"expected a rate such as '100/second' or '10 per 5 minutes', got {text!r}"
        ) from None
    if len(items) != 1:
        raise ValueError(f"expected one rate, got {len(items)} in {text!r}")
    item = items[0]
    if item.amount < 1:
        raise ValueError(f"a rate allows at least 1 request, got {text!r}")
    return Rate(limit=item.amount, period=item.get_expiry(), text=text.strip())
