"""Model loading: explicit paths, one checkpoint, strict keys, one-line errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from serve_app.engine.model import load_model, select_device
from serve_app.wire import ModelLoadError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_loads_and_reports_shape(tiny_model):
    assert tiny_model.model.sos == 10000
    assert len(tiny_model.tokenizer.symbol_table) == 10001
    assert tiny_model.output_frame_ms == 40
    assert tiny_model.timings_adjustment_ms == 230.0
    assert not tiny_model.model.training


def test_missing_config(tmp_path):
    with pytest.raises(ModelLoadError) as exc:
        load_model(str(tmp_path), device="cpu")
    assert "config.yaml" in _one_line(exc)


def test_missing_tokenizer_file(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    (d / "tk.model").unlink()
    with pytest.raises(ModelLoadError) as exc:
        load_model(str(d), device="cpu")
    assert "tk.model" in _one_line(exc)


def test_no_checkpoint_and_several_checkpoints(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    (ckpt,) = d.glob("*.pt")
    shutil.copy(ckpt, d / "other.pt")
    with pytest.raises(ModelLoadError) as exc:
        load_model(str(d), device="cpu")
    assert "checkpoint_name" in _one_line(exc)
    assert load_model(str(d), device="cpu", checkpoint_name=ckpt.name).model is not None
    for p in d.glob("*.pt"):
        p.unlink()
    with pytest.raises(ModelLoadError) as exc:
        load_model(str(d), device="cpu")
    assert "*.pt" in _one_line(exc)


def test_corrupt_checkpoint(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    (ckpt,) = d.glob("*.pt")
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(ModelLoadError) as exc:
        load_model(str(d), device="cpu")
    assert "corrupt" in _one_line(exc)


def test_config_not_matching_weights_is_refused(tiny_model_dir, tmp_path):
    """wenet's strict=False load would leave these weights random; we refuse."""
    d = _copy(tiny_model_dir, tmp_path / "m")
    config = yaml.safe_load((d / "config.yaml").read_text())
    config["encoder_conf"]["num_blocks"] = 3
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ModelLoadError) as exc:
        load_model(str(d), device="cpu")
    assert "does not match config.yaml" in _one_line(exc)


def test_pickled_code_is_not_executed(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    (ckpt,) = d.glob("*.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, ckpt)
    with pytest.raises(ModelLoadError):
        load_model(str(d), device="cpu")
    assert not (tmp_path / "pwned").exists()


def test_hub_snapshot_layout_with_symlinks(tiny_model_dir, tmp_path):
    """Snapshot files are symlinks into a blob store; relative paths must still resolve."""
    blobs = tmp_path / "blobs"
    snap = tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(tiny_model_dir.iterdir())):
        blob = blobs / f"blob{i}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(blob)
    model = load_model(str(snap), device="cpu")
    assert model.files.cmvn.parent == snap


def test_unknown_name_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError) as exc:
        load_model("no_such_model", device="cpu")
    assert "reverb_asr_v1" in _one_line(exc)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as exc:
        load_model("reverb_asr_v1", device="cpu", cache_dir=tmp_path)
    assert "offline" in _one_line(exc)


def test_gpu_required_but_absent():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError) as exc:
        select_device("cuda")
    assert "no CUDA GPU" in _one_line(exc)
    assert select_device("auto").type == "cpu"
