"""Generate the Python stubs of protos/aegen/v1/*.proto, or check that the committed ones match.

    python -m protos.generate          # rewrite protos/aegen/v1/*_pb2*.py(i)
    python -m protos.generate --check  # exit 1 if the committed stubs differ from a fresh generation

The stubs are generated with the repository root as the include path, so they import each other as
`protos.aegen.v1` and work from an installed wheel and from a checkout alike.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = Path("protos") / "aegen" / "v1"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency: the serving image only needs the generated files

    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / PROTO_DIR).glob("*.proto"))
    args = ["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_dir / PROTO_DIR).glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed stubs, write nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for f in fresh:
            committed = ROOT / PROTO_DIR / f.name
            if not committed.exists() or not filecmp.cmp(f, committed, shallow=False):
                stale.append(committed)
                if not args.check:
                    tmp_target = committed.with_suffix(committed.suffix + ".tmp")
                    tmp_target.write_bytes(f.read_bytes())
                    tmp_target.replace(committed)
    if args.check and stale:
        print("stale generated stubs: " + ", ".join(str(p.relative_to(ROOT)) for p in stale)
              + " (run `python -m protos.generate`)", file=sys.stderr)
        return 1
    print("stubs up to date" if not stale else f"regenerated {len(stale)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
