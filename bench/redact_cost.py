#!/usr/bin/env python3
"""What masking secrets costs per process image (enrich/redact.py), beside decoding its argv.

The process cache redacts once per exec (and per /proc entry at start),
never per event: this is the cost an exec storm pays. Prints microseconds
per argv for a command line with nothing to mask (the screen's path),
one whose program has scoped rules (mysql), and one with a secret; and,
for scale, text.decode of the same argv, which every exec pays already.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enrich.redact import Redactor
from tracer.core import text

CASES = {
    "no secret (6 args)": ("/usr/bin/python3", "-m", "http.server", "--bind", "0.0.0.0", "80"),
    "exec storm argv": ("/bin/true", "storm-0123456789ab"),
    "scoped program (mysql)": ("/usr/bin/mysql", "-uroot", "-h", "db", "shop"),
    "one secret": ("/usr/bin/app", "--db-password=hunter2", "--verbose"),
}


def main() -> None:
    r = Redactor()
    n = 50_000
    print(f"{'argv':<24} {'redact us':>10} {'decode us':>10}")
    for name, argv in CASES.items():
        raw = [a.encode() for a in argv]
        red = timeit.timeit(lambda argv=argv: r.args(argv[0], argv), number=n) / n * 1e6
        dec = timeit.timeit(lambda raw=raw: [text.decode(b) for b in raw], number=n) / n * 1e6
        print(f"{name:<24} {red:>10.2f} {dec:>10.2f}")


if __name__ == "__main__":
    main()
