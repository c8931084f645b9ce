"""The built wheel, installed (not editable) into a fresh venv, answers a prompt from an empty directory with the
packaged defaults and the shipped drafter. The venv reuses this environment's installed dependencies (torch and
the rest, through a .pth file) so that nothing is downloaded or rebuilt; mirrorspec itself comes from the wheel."""

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).parents[1]


def test_the_installed_wheel_answers_from_an_empty_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(ROOT)], check=True, cwd=tmp_path, capture_output=True)
    [wheel] = wheels.glob("mirrorspec-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    # Dependencies from this environment; its own editable mirrorspec is not seen (only its site dir runs .pth files).
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run([str(python), "-c", "import mirrorspec, mirrorspec.orchestration.factory as f; "
                            "print(mirrorspec.__file__); print(f.DEFAULT_DRAFTER_DIR)"],
                           cwd=empty, check=True, capture_output=True, text=True).stdout.split()
    assert all(w.startswith(str(purelib)) for w in where), where  # the wheel's files, not the repository's
    answer = subprocess.run([str(env_dir / "bin" / "mirrorspec"), "generate", "What is 2 + 2?", "--max-new-tokens",
                             "12", "--json"], cwd=empty, capture_output=True, text=True, timeout=300)
    assert answer.returncode == 0, answer.stderr[-2000:]
    out = json.loads(answer.stdout)
    assert out["text"].strip() and out["method"] == "tree" and out["stats"]["drafted"] > 0
