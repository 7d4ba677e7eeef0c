"""What each compression level buys on a dynamic response: size and CPU, per algorithm.

    .venv/bin/python loadtests/compression_levels.py [--size 32768] [--repeat 200]

Encodes a JSON document of ``--size`` bytes (records like an API's list endpoint) with each
algorithm at each level the gateway's config allows, the way the compression stage does
(one streaming encoder per response, then finish), and prints the compressed size, the
ratio and the CPU time per response (process time, median of 5 runs of ``--repeat``
encodings). The defaults in `CompressionLevels` come from this table: the level past which
the size barely shrinks while the time keeps growing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from targets import json_document

from gateway.compression.codecs import encoder

LEVELS = {"gzip": range(1, 10), "br": range(0, 12), "zstd": (1, 2, 3, 4, 5, 6, 9, 12, 19)}


def encode_once(algorithm: str, level: int, data: bytes) -> int:
    stream = encoder(algorithm, level)
    return len(stream.compress(data)) + len(stream.finish())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32 * 1024)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    data = json_document(args.size)
    print(f"{len(data)} bytes of JSON; CPU per response, median of 5 x {args.repeat}")
    print(f"{'algorithm':9} {'level':>5} {'bytes':>7} {'ratio':>6} {'us':>8}")
    for algorithm, levels in LEVELS.items():
        for level in levels:
            size = encode_once(algorithm, level, data)
            runs = []
            for _ in range(5):
                started = time.process_time()
                for _ in range(args.repeat):
                    encode_once(algorithm, level, data)
                runs.append((time.process_time() - started) / args.repeat)
            print(
                f"{algorithm:9} {level:5d} {size:7d} {len(data) / size:6.1f} "
                f"{statistics.median(runs) * 1e6:8.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
