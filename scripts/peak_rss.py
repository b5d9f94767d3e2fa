"""Run a command and report its peak resident memory (RSS) and wall time.

    python scripts/peak_rss.py svhn-jax train --data synthetic --synthetic-n 604388 \\
        --preset mission --epochs 2 --out runs/big --overwrite

The command's own output passes through; the last line is one JSON object:
{"peak_rss_gib": ..., "wall_s": ..., "returncode": ...}. The peak is the largest
RSS of the command's process in GiB (2^30 bytes; resource.getrusage of the
waited-for child, Linux and macOS), read the same way as /usr/bin/time's
"Maximum resident set size".
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(argv).returncode
    except OSError as e:
        print(f"error: cannot run {argv[0]!r} ({e.strerror}); pass a command, e.g. svhn-jax train ...",
              file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    gib = kb / 2**20 if sys.platform != "darwin" else kb / 2**30   # macOS reports bytes
    print(json.dumps({"peak_rss_gib": round(gib, 3), "wall_s": round(wall, 1), "returncode": rc}))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
