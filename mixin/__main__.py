"""python -m mixin [--check] [--root DIR]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixin.config import DEFAULT
from mixin.generate import generate

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m mixin", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a checked-in file differs from the generated one",
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args()
    stale = []
    for relative, text in generate(DEFAULT).items():
        path = args.root / relative
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(relative))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {relative}")
    if stale:
        print("out of date (run `python -m mixin`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
