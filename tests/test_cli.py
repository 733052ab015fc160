"""The `glnet` command: entry point, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from glnet.modelfile import default_meta, save_model
from glnet.nn.glnet import GLNet

GLNET = [str(Path(sys.executable).with_name("glnet"))]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GLNET, *args], capture_output=True, text=True, timeout=120)


def test_subcommands_exist():
    out = run("--help").stdout
    for cmd in ("synth", "train", "segment", "vectorize", "evaluate", "import-official", "info"):
        assert cmd in out


def test_info_prints_metadata(tmp_path, tiny_cfg):
    path = save_model(GLNet(tiny_cfg), default_meta(tiny_cfg, resolution=2.0), tmp_path / "m.glnet")
    res = run("info", str(path))
    assert res.returncode == 0, res.stderr
    assert "resolution:   2 m/px" in res.stdout and "class 3" in res.stdout
    js = run("info", "--json", str(path))
    assert '"num_classes": 4' in js.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    res = run("info", str(bad))
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0
    assert str(bad) in res.stderr and "not a GLNet model file" in res.stderr
    assert "Traceback" not in res.stderr
    debug = run("--debug", "info", str(bad))
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_usage_errors_exit_2():
    assert run("info").returncode == 2
    assert run("no-such-command").returncode == 2


def test_import_official_refuses_missing_and_unsafe_inputs(tmp_path):
    res = run("import-official", str(tmp_path / "G.pth"), str(tmp_path / "G2L.pth"), "-o",
              str(tmp_path / "m.glnet"))
    assert res.returncode == 1 and "G.pth: checkpoint file not found" in res.stderr
    res = run("import-official", "a.pth", "b.pth", "-o", str(tmp_path / "missing" / "m.glnet"))
    assert res.returncode == 1 and "does not exist" in res.stderr
    assert not (tmp_path / "m.glnet").exists()
