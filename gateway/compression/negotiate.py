"""Accept-Encoding (RFC 9110 §12.5.3): which coding, if any, a response gets.

``Accept-Encoding = #( codings [ weight ] )``, ``codings = content-coding / "identity" / "*"``,
q-values from 0 to 1 with up to three decimals (§12.4.2). The rules this follows:

- the client's highest q wins among the route's ``algorithms``; a tie goes to the server's
  order (br, zstd, gzip by default: smaller for the same CPU);
- ``q=0`` refuses a coding; ``*`` stands for every coding the field does not name;
- ``x-gzip`` is ``gzip`` (§8.4.1.3); coding names are case-insensitive;
- ``identity`` is acceptable unless refused (``identity;q=0``, or ``*;q=0`` without naming
  it); named with a q above every coding, it wins, so a client that ranks uncompressed first
  gets it;
- no field at all, or an empty one, gets identity: RFC 9110 would allow any coding without
  the field, but old clients and scripts that send none do not expect one (nginx, Envoy and
  HAProxy answer them uncompressed too).

An element that does not parse is skipped; at most `MAX_ELEMENTS` are read.
"""

from __future__ import annotations

import re
from typing import Final

IDENTITY: Final = "identity"
MAX_ELEMENTS: Final = 64
_ALIASES: Final = {"x-gzip": "gzip"}
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE: Final = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?", re.ASCII)


def parse_qvalue(text: str) -> float | None:
    """RFC 9110 §12.4.2 qvalue, or None when ``text`` is not one."""
    return float(text) if _QVALUE.fullmatch(text) else None


def accepted(values: list[bytes]) -> dict[str, float]:
    """The codings of Accept-Encoding field values and their q, lower-case; a coding named
    twice keeps its first q."""
    found: dict[str, float] = {}
    count = 0
    for value in values:
        for raw_element in value.decode("latin-1").split(","):
            element = raw_element.strip()
            if not element:
                continue
            count += 1
            if count > MAX_ELEMENTS:
                return found
            name, _, params = element.partition(";")
            name = name.strip().lower()
            name = _ALIASES.get(name, name)
            if not name:
                continue
            q: float | None = 1.0
            for param in params.split(";") if params else ():
                key, _, raw = param.strip().partition("=")
                if key.strip().lower() == "q":
                    q = parse_qvalue(raw.strip())
            if q is None:
                continue  # an unreadable weight: the element is skipped
            found.setdefault(name, q)
    return found


def choose(values: list[bytes], algorithms: tuple[str, ...]) -> str:
    """The coding for a response to a request with these Accept-Encoding values: one of
    ``algorithms`` (in server preference order), or `IDENTITY`."""
    if not values:
        return IDENTITY
    weights = accepted(values)
    star = weights.get("*")
    best, best_q = IDENTITY, 0.0
    for algorithm in algorithms:
        q = weights.get(algorithm, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = algorithm, q
    if best == IDENTITY:
        return IDENTITY
    identity_q = weights.get(IDENTITY)
    if identity_q is not None and identity_q > best_q:
        return IDENTITY
    return best


def accepts(values: list[bytes], coding: str) -> bool:
    """Whether a client with these Accept-Encoding values said it takes ``coding`` (named or
    through ``*``, with a q above 0). Without the field, no: a client that sent none may not
    decode anything (curl without --compressed)."""
    weights = accepted(values)
    return weights.get(coding, weights.get("*", 0.0)) > 0


def identity_refused(values: list[bytes]) -> bool:
    """Whether the client refused an uncompressed answer (``identity;q=0`` or ``*;q=0``)."""
    weights = accepted(values)
    if IDENTITY in weights:
        return weights[IDENTITY] == 0
    return weights.get("*") == 0
