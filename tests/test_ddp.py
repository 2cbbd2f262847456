"""Multi-process training: `edgekd run` under torchrun (2 processes, DDP on gloo) matches one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

RECIPE = {
    "name": "ddp", "seed": 0, "data": {"name": "digits", "label_fraction": 0.1},
    "teacher": {"model": {"family": "cnn", "params": {"width": 8, "depth": 2, "hidden": 32}}, "train": {"epochs": 3}},
    "student": {"model": {"family": "mlp", "params": {"width": 64}}},
    "distill": {"train": {"epochs": 6}},
    "export": {"formats": ["onnx"], "targets": {"teacher": [], "student": ["fp32"], "scratch": []}},
    "bench": {"enabled": False},
}


def _edgekd() -> str:
    return str(Path(sys.executable).with_name("edgekd"))


def _predictions(run: Path, role: str, x: np.ndarray) -> np.ndarray:
    import torch

    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=64)
    model.load_state_dict(torch.load(run / "checkpoints" / f"{role}.pt", weights_only=True)["state_dict"])
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).numpy()


def test_two_processes_with_ddp_match_one_process(tmp_path):
    from edgekd.data import load_data

    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([_edgekd(), "run", str(recipe), "--output-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    two = subprocess.run([torchrun, "--nproc-per-node", "2", "--no-python", _edgekd(), "run", str(recipe),
                          "--output-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert two.returncode == 0, two.stderr[-3000:]

    manifests = {k: json.loads((tmp_path / k / "ddp" / "manifest.json").read_text())["stages"] for k in ("one", "two")}
    assert set(manifests["two"]) == set(manifests["one"])  # rank 0 wrote every stage; the other rank wrote nothing else
    x_test = load_data("digits", label_fraction=0.1).x_test
    for stage, role in (("distill", "student"), ("scratch", "scratch")):
        acc_one = manifests["one"][stage]["metrics"]["test_accuracy"]
        acc_two = manifests["two"][stage]["metrics"]["test_accuracy"]
        assert abs(acc_one - acc_two) <= 0.03, (stage, acc_one, acc_two)
        agreement = (_predictions(tmp_path / "one" / "ddp", role, x_test)
                     == _predictions(tmp_path / "two" / "ddp", role, x_test)).mean()
        # Not bit-identical: each rank's cross-entropy averages over its own labelled samples.
        assert agreement >= 0.95, (role, agreement)
    assert (tmp_path / "two" / "ddp" / "artifacts" / "student-onnx-fp32" / "model.onnx").is_file()
