"""Installed, not only checked out: the wheel carries the built-in profiles and runs outside a checkout."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def sh(*cmd, cwd=None, env=None) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out.stdout


@pytest.mark.slow
def test_the_wheel_ships_its_profiles_and_collects_outside_a_checkout(tmp_path):
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", ROOT)
    wheel = next((tmp_path / "dist").glob("adkit-*.whl"))
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    site = sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    # the dependencies come from this environment (a path entry: its .pth files, the editable checkout's
    # among them, are not processed); adkit itself only from the wheel
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    project = tmp_path / "elsewhere"
    project.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    where = sh(python, "-c", "import adkit; print(adkit.__file__)", cwd=project, env=env)
    assert where.startswith(str(venv)), where
    doctor = subprocess.run([venv / "bin" / "adkit", "doctor", "-c", "tiny"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert doctor.returncode == 1 and "profile tiny: darkroom" in doctor.stdout, doctor.stdout + doctor.stderr
    assert "next: adkit collect -c tiny" in doctor.stdout
    sh(venv / "bin" / "adkit", "collect", "-c", "tiny", cwd=project, env=env)
    assert len(list((project / "data").glob("darkroom-psrl-*.h5"))) == 1
