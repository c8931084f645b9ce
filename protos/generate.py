"""Regenerate the Python code of the .proto files in this folder: `python -m mirrorspec.protos.generate`.

The generated modules import each other as `mirrorspec.protos.*`, so protoc runs over a copy laid out that way.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTOS = ("speculation.proto", "generation.proto", "admin.proto")


def generate(out_dir: Path = HERE) -> list[Path]:
    """Write <name>_pb2.py, <name>_pb2.pyi and <name>_pb2_grpc.py for every proto into `out_dir`."""
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src" / "mirrorspec" / "protos"
        dst = Path(tmp) / "out"
        src.mkdir(parents=True)
        dst.mkdir()
        for name in PROTOS:
            shutil.copy(HERE / name, src / name)
            args = ["protoc", f"-I{Path(tmp) / 'src'}", f"--python_out={dst}", f"--pyi_out={dst}",
                    f"--grpc_python_out={dst}", str(src / name)]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {name}")
        for path in sorted((dst / "mirrorspec" / "protos").iterdir()):
            shutil.copy(path, out_dir / path.name)
            written.append(out_dir / path.name)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(path)
