"""The compression section of loadtests/bench.py: its document and its ratios.

The load-test scripts are not a package: their directory goes on sys.path as when they run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtests"))

from compression_bench import add_ratios
from targets import json_document


@pytest.mark.parametrize("size", [64, 1000, 32 * 1024, 100_000])
def test_the_document_is_json_of_exactly_the_size(size: int) -> None:
    document = json_document(size)
    assert len(document) == size
    assert isinstance(json.loads(document)["items"], list)


def summary(rps: float) -> dict[str, Any]:
    return {"summary": {"rps": rps}}


def test_ratios_pair_each_gateway_with_its_nginx_and_gzip_with_identity() -> None:
    outcome = {
        "gzip": {
            "nginx-gzip": summary(2000),
            "gateway-gzip": summary(1000),
            "nginx-cache-gzip": summary(2500),
            "gateway-cache-gzip": summary(10_000),
        },
        "identity": {
            "nginx-gzip": summary(20_000),
            "gateway-gzip": summary(8000),
            "nginx-cache-gzip": summary(40_000),
            "gateway-cache-gzip": summary(12_500),
        },
    }
    result = add_ratios(outcome)
    gzip, identity = result["gzip"], result["identity"]
    assert gzip["gateway-gzip"]["summary"]["vs_nginx"] == pytest.approx(0.5)
    assert gzip["gateway-cache-gzip"]["summary"]["vs_nginx"] == pytest.approx(4.0)
    assert identity["gateway-cache-gzip"]["summary"]["vs_nginx"] == pytest.approx(0.3125)
    assert gzip["nginx-gzip"]["summary"]["vs_nginx"] == pytest.approx(1.0)
    assert gzip["gateway-cache-gzip"]["summary"]["gzip_vs_identity"] == pytest.approx(0.8)
    assert gzip["nginx-gzip"]["summary"]["gzip_vs_identity"] == pytest.approx(0.1)
