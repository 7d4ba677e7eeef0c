"""HTTP-date (RFC 9110 §5.6.7) to seconds since the epoch, and back.

Recipients accept all three formats; IMF-fixdate, the one senders must use, is parsed by
position, the obsolete RFC 850 and asctime forms through `email.utils`. Anything else is None;
the caller decides what an invalid date means (for Expires: already expired, RFC 9111 §5.3).
"""

from __future__ import annotations

import calendar
import email.utils
from typing import Final

_MONTHS: Final = {
    b"Jan": 1,
    b"Feb": 2,
    b"Mar": 3,
    b"Apr": 4,
    b"May": 5,
    b"Jun": 6,
    b"Jul": 7,
    b"Aug": 8,
    b"Sep": 9,
    b"Oct": 10,
    b"Nov": 11,
    b"Dec": 12,
}
_DAYS: Final = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")


def parse_http_date(value: bytes) -> float | None:
    """Seconds since the epoch for an HTTP-date, or None when ``value`` is not one."""
    value = value.strip()
    # IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT", 29 bytes at fixed positions.
    if len(value) == 29 and value[3:5] == b", " and value[25:] == b" GMT":
        month = _MONTHS.get(value[8:11])
        digits = value[5:7] + value[12:16] + value[17:19] + value[20:22] + value[23:25]
        if month is not None and digits.isdigit() and value[:3] in _DAYS:
            day, year = int(value[5:7]), int(value[12:16])
            hour, minute, second = int(value[17:19]), int(value[20:22]), int(value[23:25])
            if 1 <= day <= 31 and hour < 24 and minute < 60 and second <= 60:
                return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
        return None
    try:
        parts = email.utils.parsedate_tz(value.decode("latin-1"))
    except (ValueError, IndexError, OverflowError):
        return None
    if parts is None or parts[9] not in (0, None):
        # HTTP-dates are always GMT; an offset means this is some other format.
        return None
    try:
        return float(calendar.timegm(parts[:9]))
    except (ValueError, OverflowError):
        return None


def format_http_date(seconds: float) -> bytes:
    """IMF-fixdate for ``seconds`` since the epoch."""
    return email.utils.formatdate(seconds, usegmt=True).encode("ascii")
