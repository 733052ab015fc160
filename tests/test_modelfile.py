"""Model files: round trip, and refusal of anything crafted or corrupt without running it."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glnet.errors import ModelFileError
from glnet.modelfile import ClassInfo, default_meta, load_model, read_metadata, save_model
from glnet.nn.glnet import GLNet
from glnet.nn.official import load_checkpoint
from glnet.nn.predict import predict_window


class Payload:
    """Unpickling this runs ``Path(marker).touch()``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _meta(cfg, **kw):
    classes = tuple(ClassInfo(i, n, c) for i, (n, c) in
                    enumerate([("water", (0, 0, 255)), ("forest", (0, 128, 0)),
                               ("urban", (200, 0, 0)), ("crop", (250, 220, 0))]))
    fields = dict(classes=classes, dtype="uint16", mean=(100.0, 200.0, 300.0),
                  std=(10.0, 20.0, 30.0), resolution=0.5, stages=(1, 2, 3))
    return default_meta(cfg, **{**fields, **kw})


def test_round_trip(tmp_path, tiny_cfg):
    model = GLNet(tiny_cfg, context_branch=True).eval()
    meta = _meta(tiny_cfg)
    path = save_model(model, meta, tmp_path / "m.glnet")
    assert read_metadata(path) == meta
    loaded, meta2 = load_model(path)
    assert meta2 == meta and loaded.has_context_branch
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    window = torch.rand(1, 3, 192, 192)
    torch.testing.assert_close(predict_window(model, window).probabilities,
                               predict_window(loaded, window).probabilities)
    assert [p.name for p in tmp_path.iterdir()] == ["m.glnet"]  # no temporary left


def test_same_model_same_bytes(tmp_path, tiny_cfg):
    # The metadata order of safetensors' writer changes between processes; ours is sorted.
    torch.manual_seed(0)
    model = GLNet(tiny_cfg, context_branch=True).eval()
    meta = _meta(tiny_cfg, notes="Białowieża \u2028 \"quoted\"")
    paths = [save_model(model, meta, tmp_path / f"{i}.glnet") for i in range(2)]
    script = ("import sys; from glnet.modelfile import load_model, save_model; "
              "m, meta = load_model(sys.argv[1]); save_model(m, meta, sys.argv[2])")
    subprocess.run([sys.executable, "-c", script, str(paths[0]), str(tmp_path / "other.glnet")],
                   check=True)
    blobs = {p.read_bytes() for p in [*paths, tmp_path / "other.glnet"]}
    assert len(blobs) == 1
    blob = blobs.pop()
    (length,) = struct.unpack("<Q", blob[:8])
    assert length % 8 == 0 and list(json.loads(blob[8:8 + length])["__metadata__"]) == [
        "format", "format_version", "glnet", "sha256"]
    assert read_metadata(paths[0]) == meta
    loaded, _ = load_model(paths[0])
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_pickle_disguised_as_model_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.glnet"
    evil.write_bytes(pickle.dumps({"weights": Payload(marker)}))
    with pytest.raises(ModelFileError, match=r"evil\.glnet: not a GLNet model file"):
        load_model(evil)
    torch_pickle = tmp_path / "evil2.glnet"
    torch.save({"x": Payload(marker)}, torch_pickle)
    with pytest.raises(ModelFileError, match="evil2.glnet"):
        load_model(torch_pickle)
    assert not marker.exists()


def test_malicious_checkpoint_for_import_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "G.pth"
    torch.save({"module.resnet_global.conv1.weight": torch.zeros(1), "x": Payload(marker)}, evil)
    with pytest.raises(ModelFileError, match=r"G\.pth: refused"):
        load_checkpoint(evil)
    assert not marker.exists()


def _safetensors_with(tmp_path: Path, header: dict, name="bad.glnet") -> Path:
    path = tmp_path / name
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def test_crafted_headers_are_refused(tmp_path, tiny_cfg):
    huge = tmp_path / "huge.glnet"
    huge.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(ModelFileError, match="no safetensors header"):
        read_metadata(huge)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ModelFileError, match="not a GLNet model"):
        read_metadata(other)
    newer = _safetensors_with(tmp_path, {"__metadata__": {"format": "glnet-qgis", "format_version": "99",
                                                          "glnet": "{}"}})
    with pytest.raises(ModelFileError, match="version '99' is not supported"):
        read_metadata(newer)
    meta = json.loads(_meta(tiny_cfg).to_json())
    meta["net"]["num_classes"] = 10**9  # would allocate an absurd network
    absurd = _safetensors_with(tmp_path, {"__metadata__": {"format": "glnet-qgis", "format_version": "1",
                                                           "glnet": json.dumps(meta)}})
    with pytest.raises(ModelFileError, match="invalid model metadata.*num_classes"):
        read_metadata(absurd)
    meta["net"]["num_classes"] = 4
    meta["net"]["backbone"] = "os.system"
    weird = _safetensors_with(tmp_path, {"__metadata__": {"format": "glnet-qgis", "format_version": "1",
                                                          "glnet": json.dumps(meta)}})
    with pytest.raises(ModelFileError, match="invalid model metadata.*backbone"):
        read_metadata(weird)


def test_weights_that_do_not_match_the_metadata(tmp_path, tiny_cfg):
    model = GLNet(tiny_cfg)
    path = save_model(model, _meta(tiny_cfg, stages=(1,)), tmp_path / "m.glnet")
    header = read_metadata(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["aggregation.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(state, str(tmp_path / "x.glnet"), metadata={"format": "glnet-qgis", "format_version": "1",
                                                          "glnet": header.to_json()})
    with pytest.raises(ModelFileError, match=r"x\.glnet: weight aggregation.weight has shape"):
        load_model(tmp_path / "x.glnet")
    truncated = tmp_path / "t.glnet"
    truncated.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match=r"t\.glnet"):
        load_model(truncated)


def test_save_is_atomic_when_interrupted(tmp_path, tiny_cfg, monkeypatch):
    import glnet.modelfile as mf

    path = tmp_path / "m.glnet"
    path.write_bytes(b"old model")

    def failing(target, head, data):  # interrupted after the header is on disk
        Path(target).write_bytes(head)
        raise KeyboardInterrupt

    monkeypatch.setattr(mf, "_write_parts", failing)
    with pytest.raises(KeyboardInterrupt):
        save_model(GLNet(tiny_cfg), _meta(tiny_cfg), path)
    assert path.read_bytes() == b"old model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.glnet"]
