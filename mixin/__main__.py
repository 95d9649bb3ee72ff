"""python -m mixin [--check] [--root DIR] [--config FILE]

Writes the rules, dashboards and runbooks (or, with --check, fails if the files under
--root differ from them). --config FILE is a Python file that defines `config =
MixinConfig(...)` (see mixin/config.py); without it, mixin.config.DEFAULT."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from mixin.config import DEFAULT, MixinConfig
from mixin.generate import generate

ROOT = Path(__file__).resolve().parent.parent


def load_config(path: Path) -> MixinConfig:
    """The `config` a Python file defines (it is run, as `python FILE` would)."""
    namespace = runpy.run_path(str(path), run_name="mixin_config")
    config = namespace.get("config")
    if not isinstance(config, MixinConfig):
        raise SystemExit(
            f"{path}: defines no `config = MixinConfig(...)` "
            f"(found {type(config).__name__ if config is not None else 'nothing'})"
        )
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mixin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a checked-in file differs from the generated one",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        metavar="DIR",
        help="where to write (default: this repository)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a Python file defining `config = MixinConfig(...)` (default: mixin/config.py's)",
    )
    args = parser.parse_args(argv)
    config = load_config(args.config) if args.config is not None else DEFAULT
    stale = []
    for relative, text in generate(config).items():
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
