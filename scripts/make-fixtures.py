#!/usr/bin/env python3
"""make-fixtures.py — real QEMU migration files plus ground truth for mramfs tests.

Usage:
    scripts/make-fixtures.py OUTDIR [--only NAME ...] [--list] [--accel tcg|kvm|auto]
                             [--jobs N] [--qemu PATH]

Only the entry point (scripts/test.sh and Tests/QEMUFixtures run it by path;
nothing imports it): the code is the package scripts/fixtures/, whose
__init__.py documents what it makes and OUTDIR/manifest.json.
"""

import os
import sys

if __name__ == "__main__":
    sys.dont_write_bytecode = True  # no __pycache__ in the checkout
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fixtures.cli import main
    sys.exit(main())
