"""The plugin's worker runner (glnet_qgis/worker.py and the discovery, process,
lines and cleanup modules it uses) without QGIS.

They need only the standard library and glnet.contract, so they are loaded here
from the plugin folder as a stand-in package (the real package's __init__
imports qgis). The engine is either the real CLI in this
virtual environment or a small shell script standing in for ``python`` that
behaves in the ways a worker can: progress, messages, errors, a clean
cancellation, and one that ignores SIGTERM and has to be killed.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _plugin_modules():
    """glnet_qgis's folder as a package without its __init__ (which imports qgis)."""
    name = "glnet_qgis_without_qgis"
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    package = types.ModuleType(name)
    package.__path__ = [str(ROOT / "glnet_qgis")]
    sys.modules[name] = package
    return {m: importlib.import_module(f"{name}.{m}")
            for m in ("worker", "discovery", "process", "lines", "cleanup")}


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.delenv("GLNET_PYTHON", raising=False)
    return types.SimpleNamespace(**_plugin_modules())


@pytest.fixture
def worker(plugin):
    return plugin.worker


@pytest.fixture
def discovery(plugin):
    return plugin.discovery


class Feedback:
    """The parts of QgsProcessingFeedback the runner uses, recording the calls."""

    def __init__(self, cancel_at: float | None = None):
        self.events: list[tuple[str, object]] = []
        self.cancel_at = cancel_at
        self.cancelled_at: float | None = None

    def setProgress(self, value):
        self.events.append(("progress", value))

    def pushInfo(self, text):
        self.events.append(("info", text))

    def pushConsoleInfo(self, text):
        self.events.append(("console", text))

    def pushWarning(self, text):
        self.events.append(("warning", text))

    def pushCommandInfo(self, text):
        self.events.append(("command", text))

    def pushDebugInfo(self, text):
        self.events.append(("debug", text))

    def isCanceled(self):
        progressed = any(kind == "progress" and value > 0 for kind, value in self.events)
        if self.cancel_at is not None and progressed and self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
        return self.cancelled_at is not None

    def of(self, kind):
        return [value for k, value in self.events if k == kind]


FAKE_ENGINE = r"""#!/bin/bash
# Stands in for "python -m glnet.cli --progress json COMMAND -o OUT": $5, $7.
command="$5"; out="$7"
case "$command" in
  ok)
    echo '{"message": "reading the scene"}' >&2
    echo '{"progress": 0.25}' >&2
    echo 'some plain line' >&2
    echo 'glnet ok: warning: resolution differs' >&2
    echo '{"progress": 1.0}' >&2
    echo "wrote $out"
    ;;
  fail)
    echo '{"progress": 0.1}' >&2
    echo "ERROR 1: $out: TIFFReadDirectory: failed" >&2
    echo "glnet fail: error: $out: not a raster GDAL can read" >&2
    exit 1
    ;;
  clean)  # the engine's way: SIGTERM removes the temporary file, exit 130
    tmp="$(dirname "$out")/.$(basename "$out").abcd1234.part"
    : > "$tmp"
    trap 'rm -f "$tmp"; echo "glnet clean: cancelled" >&2; exit 130' TERM
    while true; do echo '{"progress": 0.5}' >&2; sleep 0.1; done
    ;;
  family)  # a child of its own (as pip's builds, Dask's workers): cancelling stops it too
    (trap '' TERM; exec sleep 30) &
    echo $! > "$out.child"
    trap 'exit 130' TERM
    while true; do echo '{"progress": 0.5}' >&2; sleep 0.1; done
    ;;
  stubborn)  # ignores SIGTERM: must be killed, its temporary files removed for it
    tmp="$(dirname "$out")/.$(basename "$out").abcd1234.tag.tif"
    : > "$tmp"; : > "$tmp.aux.xml"
    trap '' TERM
    while true; do echo '{"progress": 0.5}' >&2; sleep 0.1; done
    ;;
esac
"""


@pytest.fixture
def fake_python(tmp_path) -> str:
    path = tmp_path / "bin" / "python"
    path.parent.mkdir()
    path.write_text(FAKE_ENGINE)
    path.chmod(0o755)
    return str(path)


def test_progress_messages_and_output_reach_the_feedback(worker, fake_python, tmp_path):
    feedback = Feedback()
    out = tmp_path / "mask.tif"
    result = worker.run_engine("ok", ["-o", str(out)], feedback, python=fake_python)
    assert result.returncode == 0 and result.stdout_lines == [f"wrote {out}"]
    assert feedback.of("progress") == [25.0, 100.0]
    # (stdout and stderr are separate pipes: their lines may interleave either way)
    assert sorted(feedback.of("info")) == ["reading the scene", f"wrote {out}"]
    assert feedback.of("console") == ["some plain line"]
    assert feedback.of("warning") == ["glnet ok: warning: resolution differs"]
    (command,) = feedback.of("command")
    assert command.startswith(f"{fake_python} -m glnet.cli --progress json ok -o ")


def test_engine_error_is_its_one_line_message(worker, fake_python, tmp_path):
    feedback = Feedback()
    with pytest.raises(worker.EngineError) as err:
        worker.run_engine("fail", ["-o", "scene.tif"], feedback, python=fake_python)
    assert str(err.value) == "scene.tif: not a raster GDAL can read"
    # Shown once (QGIS shows the raised error), and not GDAL's raw line.
    assert [kind for kind, _ in feedback.events] == ["command", "progress"]


def test_cancel_stops_the_engine_which_cleans_up(worker, fake_python, tmp_path):
    feedback = Feedback(cancel_at=0)
    out = tmp_path / "mask.tif"
    with pytest.raises(worker.EngineCancelled):
        worker.run_engine("clean", ["-o", str(out)], feedback, outputs=[out],
                          python=fake_python)
    assert time.monotonic() - feedback.cancelled_at < 2
    assert list(tmp_path.iterdir()) == [tmp_path / "bin"]


def test_cancel_reaches_the_workers_children(plugin, worker, fake_python, tmp_path, monkeypatch):
    monkeypatch.setattr(plugin.process, "TERMINATE_GRACE", 0.5)
    out = tmp_path / "mask.tif"
    with pytest.raises(worker.EngineCancelled):
        worker.run_engine("family", ["-o", str(out)], Feedback(cancel_at=0), outputs=[out],
                          python=fake_python)
    child = int(Path(f"{out}.child").read_text())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.05)  # killed, waiting to be reaped by init
        try:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
        except OSError:
            break
        if state == "Z":
            break
    else:
        assert not os.path.exists(f"/proc/{child}"), "the child outlived the cancel"


def test_a_worker_ignoring_sigterm_is_killed_and_its_files_removed(plugin, worker, fake_python,
                                                                   tmp_path, monkeypatch):
    monkeypatch.setattr(plugin.process, "TERMINATE_GRACE", 0.5)
    feedback = Feedback(cancel_at=0)
    out = tmp_path / "mask.tif"
    mine = tmp_path / ".mask.tif.my notes"  # not one of the engine's names: kept
    mine.write_text("mine")
    with pytest.raises(worker.EngineCancelled):
        worker.run_engine("stubborn", ["-o", str(out)], feedback, outputs=[out],
                          python=fake_python)
    assert time.monotonic() - feedback.cancelled_at < 3
    assert sorted(tmp_path.iterdir()) == sorted([tmp_path / "bin", mine])


def test_partial_output_names(plugin, tmp_path):
    names = [".mask.tif.abcd_123.part", ".mask.tif.x1y2z3w4.mask.tif",
             ".mask.tif.x1y2z3w4.mask.tif.ovr", ".mask.tif.x1y2z3w4.prob.tif.aux.xml",
             ".mask.qml.k2j3h4g5.part", ".model.glnet.ckpt.a1b2c3d4.part",
             ".polygons.gpkg.q1w2e3r4.work"]
    kept = ["mask.tif", ".mask.tif", ".mask.tif.notes", ".other.tif.abcd_123.part",
            ".mask.tif.abc.part", "x.mask.tif.abcd_123.part"]
    for name in names + kept:
        (tmp_path / name).write_text("")
    outputs = [tmp_path / "mask.tif", tmp_path / "model.glnet", tmp_path / "polygons.gpkg"]
    removed = plugin.cleanup.remove_partial_outputs(outputs)
    assert sorted(Path(p).name for p in removed) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_the_real_engine(worker, tmp_path):
    from glnet.config import NetConfig
    from glnet.modelfile import default_meta, save_model
    from glnet.nn.glnet import GLNet

    net = NetConfig(num_classes=2, fpn_channels=8, smooth_channels=4, window_size=128,
                    global_size=64, patch_size=64, min_overlap=8)
    model = save_model(GLNet(net), default_meta(net), tmp_path / "m.glnet")
    result = worker.run_engine("info", [str(model), "--json"], None, python=sys.executable,
                               echo_stdout=False)
    assert json.loads(result.stdout)["net"]["window_size"] == 128
    with pytest.raises(worker.EngineError) as err:
        worker.run_engine("info", [str(tmp_path / "none.glnet")], None, python=sys.executable)
    assert str(err.value).startswith(f"{tmp_path / 'none.glnet'}: ")
    with pytest.raises(worker.EngineError) as err:  # usage errors too
        worker.run_engine("segment", [str(model)], None, python=sys.executable)
    assert "required" in str(err.value) and "usage" not in str(err.value)


def test_discovery_order(discovery, tmp_path, monkeypatch):
    # No setting outside QGIS; without GLNET_PYTHON the checkout's .venv comes first.
    assert discovery.setting_value() == ""
    explicit, found = discovery.candidates()
    assert explicit is None
    assert found[0] == (str(ROOT / ".venv" / "bin" / "python"), "source checkout")
    assert found[1][0] == os.path.expanduser("~/.local/share/glnet-qgis/venv/bin/python")
    if (ROOT / ".venv" / "bin" / "python").exists():
        assert discovery.find_python() == str(ROOT / ".venv" / "bin" / "python")

    # GLNET_PYTHON: that one only, and the message says how to fix it.
    monkeypatch.setenv("GLNET_PYTHON", str(tmp_path / "nowhere" / "python"))
    assert discovery.candidates() == ("the environment variable GLNET_PYTHON",
                                   [(str(tmp_path / "nowhere" / "python"), "GLNET_PYTHON")])
    with pytest.raises(discovery.EngineNotFound) as err:
        discovery.find_python()
    text = str(err.value)
    assert text.startswith("The GLNet engine was not found.")
    assert f"names {tmp_path / 'nowhere' / 'python'}, which cannot import glnet (not found)" in text
    # The checkout's source tree, its extra and the pinned torch (plugin from a checkout).
    assert f"{tmp_path / 'nowhere' / 'python'} -m pip install '{ROOT}[pretrained]' " \
           "torch==" in text
    assert '"Set up the GLNet engine" (glnet:setupengine;' in text

    monkeypatch.setenv("GLNET_PYTHON", sys.executable)
    assert discovery.find_python() == sys.executable
    assert discovery.check_python(sys.executable)[1].startswith("glnet ")


def test_install_message_without_any_candidate(discovery, monkeypatch, tmp_path):
    monkeypatch.setattr(discovery, "PLUGIN_DIR", str(tmp_path / "plugins" / "glnet_qgis"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(discovery.EngineNotFound) as err:
        discovery.find_python()
    text = str(err.value)
    # A plugin folder with neither a wheel nor a checkout: the source tree, by name.
    assert "python3 -m venv $HOME/.local/share/glnet-qgis/venv && " \
           "$HOME/.local/share/glnet-qgis/venv/bin/python -m pip install " \
           "'/path/to/glnet-qgis[pretrained]'" in text
    assert "GLNET_PYTHON" in text and "(glnet:setupengine;" in text
    assert f"{tmp_path}/.local/share/glnet-qgis/venv/bin/python (user environment: not found)" \
        in text


def test_console_script_interpreter(discovery, tmp_path):
    def script(text):
        path = tmp_path / "glnet"
        path.write_text(text)
        return str(path)

    assert discovery.script_interpreter(script("#!/opt/env/bin/python3.11\nimport sys\n")) == \
        "/opt/env/bin/python3.11"
    # pip's form for long paths and paths with spaces
    assert discovery.script_interpreter(script(
        "#!/bin/sh\n'''exec' \"/opt/my env/bin/python\" \"$0\" \"$@\"\n' '''\n")) == \
        "/opt/my env/bin/python"
    assert discovery.script_interpreter(script("#!/usr/bin/env python3\n")) == \
        shutil.which("python3")
    assert discovery.script_interpreter(script("no shebang\n")) is None
    assert discovery.script_interpreter(str(tmp_path / "missing")) is None


def test_engine_hints_name_the_dialogs_parameters(plugin):
    assert plugin.lines.dialog_terms("give --resolution M, or --force-resample to run it anyway") == (
        'give "Resample to this resolution" M, or turning on "Resample even by more than 4x" '
        "to run it anyway")
    assert "--" not in plugin.lines.dialog_terms("x.tif: already exists (use --overwrite to replace it)")
    assert plugin.lines.dialog_terms("e.g. --bands 1,1,1") == 'e.g. "Bands" 1,1,1'
