"""Generate the Python stubs of every proto directory, or check that the committed ones match.

    python -m protos.generate          # rewrite protos/aegen/v1/*_pb2*.py(i) and protos/inference/*_pb2*.py(i)
    python -m protos.generate --check  # exit 1 if the committed stubs differ from a fresh generation

Every stub imports its neighbours as `protos.<directory>`, so they work from an installed wheel and from
a checkout alike. aegen/v1 is compiled with the repository root as the include path, which gives that
directly. protos/inference imports its model_config.proto as `inference/model_config.proto` (the path
buf resolves from protos/buf.yaml, where the import must be found for `buf lint`), so it is compiled
with protos/ as the include path and its generated imports are then prefixed with `protos.`.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

from protos.atomic import atomic_write_bytes

ROOT = Path(__file__).resolve().parent.parent
# Each proto directory, and the directory its .proto import paths are relative to.
PROTO_DIRS = {
    Path("protos") / "aegen" / "v1": Path("."),
    Path("protos") / "inference": Path("protos"),
}


def _compile(proto_dir: Path, include: Path, out_dir: Path) -> None:
    from grpc_tools import protoc  # dev dependency: the serving image only needs the generated files

    protos = sorted(str(p.relative_to(ROOT / include)) for p in (ROOT / proto_dir).glob("*.proto"))
    args = ["protoc", f"-I{ROOT / include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {proto_dir}")


def _prefix_imports(path: Path, package: str, prefix: str) -> None:
    """`from inference import x_pb2` → `from protos.inference import x_pb2` in a generated stub."""
    text = path.read_text()
    path.write_text(re.sub(rf"^from {re.escape(package)} import ", f"from {prefix}{package} import ", text,
                           flags=re.MULTILINE))


def generate(out_dir: Path) -> list[Path]:
    """Every stub, written under out_dir at its path relative to the repository root."""
    stubs = []
    for proto_dir, include in PROTO_DIRS.items():
        with tempfile.TemporaryDirectory() as tmp:
            _compile(proto_dir, include, Path(tmp))
            generated = Path(tmp) / proto_dir.relative_to(include)
            prefix = "".join(f"{part}." for part in include.parts)
            (out_dir / proto_dir).mkdir(parents=True, exist_ok=True)
            for stub in sorted(generated.glob("*_pb2*.py*")):
                if prefix:
                    _prefix_imports(stub, ".".join(proto_dir.relative_to(include).parts), prefix)
                target = out_dir / proto_dir / stub.name
                target.write_bytes(stub.read_bytes())
                stubs.append(target)
    return stubs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed stubs, write nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for f in fresh:
            committed = ROOT / f.relative_to(tmp)
            if not committed.exists() or not filecmp.cmp(f, committed, shallow=False):
                stale.append(committed)
                if not args.check:
                    atomic_write_bytes(committed, f.read_bytes())
    if args.check and stale:
        print("stale generated stubs: " + ", ".join(str(p.relative_to(ROOT)) for p in stale)
              + " (run `python -m protos.generate`)", file=sys.stderr)
        return 1
    print("stubs up to date" if not stale else f"regenerated {len(stale)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
