"""The API definition: committed stubs match the .proto, buf lint is clean, and the service is what we serve."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from protos.aegen.v1 import generator_pb2 as pb
from server.servicer import GeneratorServicer

ROOT = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_a_fresh_generation():
    result = subprocess.run([sys.executable, "-m", "protos.generate", "--check"], cwd=ROOT, check=False, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_buf_lint_is_clean():
    buf = shutil.which("buf") or str(ROOT / ".tools" / "node_modules" / ".bin" / "buf")
    if not Path(buf).exists():
        pytest.skip("buf not installed (`make tools`)")
    result = subprocess.run([buf, "lint"], cwd=ROOT / "protos", check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_servicer_implements_every_method_of_the_service():
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["GeneratorService"].methods}
    assert methods == {"GenerateSamples", "StreamSamples", "Encode", "Reconstruct", "ListModels", "GetModelInfo"}
    for name in methods:
        assert getattr(GeneratorServicer, name) is not getattr(GeneratorServicer.__mro__[1], name), name
