"""edgekd used as a library leaves the calling process as it found it: a notebook or a user's script that calls
edgekd.run must not find its random generators, loggers, signal handlers or onnxruntime's log level changed.

One small real run (digits, MLPs, ONNX + TFLite FP32, the host bench, the report) with the state recorded
around it; the text teacher's loading on its own (the whole text run takes minutes)."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import edgekd

from conftest import import_or_skip

MICRO_RECIPE = {
    "name": "micro", "seed": 0, "data": {"name": "digits", "label_fraction": 0.1},
    "teacher": {"model": {"family": "mlp", "params": {"width": 8}}, "train": {"epochs": 1}},
    "student": {"model": {"family": "mlp", "params": {"width": 8}}},
    "distill": {"train": {"epochs": 1}}, "scratch": {"enabled": False},
    "export": {"formats": ["onnx", "tflite"], "targets": {"teacher": [], "student": ["fp32"]},
               "parity": {"min_agreement": 0.01, "min_agreement_int4": 0.01}, "qat": {"enabled": False}},
    "bench": {"device": "host", "warmup_runs": 1, "min_runs": 5, "min_seconds": 0.01, "rounds": 1, "max_seconds": 1.0},
}
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGCHLD, signal.SIGUSR1)


def _loggers() -> dict[str, tuple]:
    """Every logger's (level, handlers, propagate, disabled), the root's under ''."""
    found = {name: lg for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    return {name: (lg.level, tuple(lg.handlers), lg.propagate, lg.disabled)
            for name, lg in {"": logging.root, **found}.items()}


def _state() -> dict:
    return {
        "torch_rng": torch.random.get_rng_state().numpy().tobytes(),
        "numpy_rng": repr(np.random.get_state()),
        "python_rng": random.getstate(),
        "torch_threads": (torch.get_num_threads(), torch.get_num_interop_threads()),
        "grad": torch.is_grad_enabled(), "dtype": torch.get_default_dtype(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "signals": {s: signal.getsignal(s) for s in SIGNALS},
        "environ": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
                                                  "OMP_NUM_THREADS", "MPLBACKEND", "LITERT_TORCH_SHOW_PROGRESS")},
        "cwd": os.getcwd(),
        "loggers": _loggers(),
        "edgekd_threads": [t.name for t in threading.enumerate() if t.name.startswith("edgekd")],
        "children": Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split(),
    }


@pytest.fixture(scope="module", autouse=True)
def _as_a_users_process_has_it():
    """torch's default thread count and no OMP_NUM_THREADS, as in a user's process: conftest's _one_torch_thread set
    both to 1 for the suite, and a run that set them to 1 itself would leave them "as it found them"."""
    import conftest

    env = pytest.MonkeyPatch()
    if conftest.ONE_THREAD_ENV_SET:
        env.delenv(conftest.ONE_THREAD_ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(conftest.TORCH_DEFAULT_THREADS or before)
    yield
    torch.set_num_threads(before)
    env.undo()


@pytest.fixture(scope="module")
def around_run(tmp_path_factory):
    """(state before, state after, the run) of one real edgekd.run. Before it the caller has drawn from its
    generators and asked for dynamo's INFO logs (torch._logging.set_logs, which attaches torch's stderr handlers)."""
    torch._logging.set_logs(dynamo=logging.INFO)
    _seed_caller()
    before = _state()
    try:
        result = edgekd.run(edgekd.load_recipe(MICRO_RECIPE), output_dir=tmp_path_factory.mktemp("runs"))
        after = _state()
    finally:
        torch._logging.set_logs()  # torch's defaults again for the worker's other test files
    assert result.stages["bench"] == "ran" and result.stages["report"] == "ran"
    return before, after, result


def _seed_caller() -> None:
    """The caller's own seeds (not edgekd's recipe seed 0)."""
    torch.manual_seed(1234)
    np.random.seed(4321)
    random.seed(99)


def test_run_puts_the_global_random_generators_back(around_run):
    before, after, _ = around_run
    for key in ("torch_rng", "numpy_rng", "python_rng"):
        assert after[key] == before[key], key


def test_export_puts_the_global_random_generators_back(around_run, tmp_path):
    """edgekd.export rebuilds the model (a random initialisation, then the checkpoint's weights) and the
    exporters draw from torch's, numpy's and Python's generators."""
    checkpoint = around_run[2].rundir.checkpoints / "student.pt"
    _seed_caller()
    before = _state()
    artifacts = edgekd.export(checkpoint, tmp_path, formats=["onnx", "tflite"], precisions=["fp32"])
    after = _state()
    assert len(artifacts) == 2
    for key in ("torch_rng", "numpy_rng", "python_rng"):
        assert after[key] == before[key], key


def test_run_leaves_every_logger_it_found_as_it_was(around_run):
    before, after, _ = around_run
    changed = {name: (state, after["loggers"][name]) for name, state in before["loggers"].items()
               if after["loggers"][name] != state}
    assert not changed, changed
    level, handlers = before["loggers"]["torch._dynamo"][:2]
    assert level == logging.INFO and handlers, "set_logs did not set torch._dynamo up: nothing was checked"


@pytest.mark.parametrize("key", ["torch_threads", "grad", "dtype", "deterministic", "signals", "environ", "cwd",
                                 "edgekd_threads", "children"])
def test_run_leaves_the_rest_of_the_process_as_it_was(around_run, key):
    before, after, _ = around_run
    assert after[key] == before[key]


def _session_with_an_unused_initializer():
    """An onnxruntime session whose model onnxruntime warns about (at its default level, WARNING) on fd 2."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              initializer=[numpy_helper.from_array(np.zeros(1, np.float32), "unused")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_onnxruntime_still_warns_after_a_run(around_run, capfd):
    """onnxslim (the ONNX export simplifies with it) sets onnxruntime's process-wide log level to ERROR."""
    capfd.readouterr()
    _session_with_an_unused_initializer()
    assert "Removing initializer 'unused'" in capfd.readouterr().err


def test_loading_the_text_teacher_leaves_transformers_and_the_environment_as_they_were():
    """transformers' verbosity and progress bars (and huggingface_hub's) are the caller's process-wide settings;
    HF_HUB_OFFLINE, which huggingface_hub reads once at import, would keep the caller's process offline."""
    transformers = import_or_skip("transformers", "the [hf] extra")
    from huggingface_hub import utils as hub_utils

    from edgekd.text.teacher import load_teacher

    transformers.logging.set_verbosity_info()  # the caller's choices
    transformers.logging.enable_progress_bar()
    try:
        before = _state()
        teacher = load_teacher()
        after = _state()
        assert teacher.dim == 384
        assert after["environ"] == before["environ"]
        assert transformers.logging.get_verbosity() == logging.INFO
        assert transformers.logging.is_progress_bar_enabled() and not hub_utils.are_progress_bars_disabled()
    finally:
        transformers.logging.set_verbosity_warning()


@pytest.mark.parametrize("args, code", [(["fields", "bench"], 0), (["run", "no-such-recipe.yaml"], 2)])
def test_a_cli_command_run_in_process_puts_the_signal_handlers_back(args, code, tmp_path, monkeypatch):
    """The CLI routes Ctrl-C and SIGTERM through edgekd.interrupts while a command runs, also when it fails."""
    from typer.testing import CliRunner

    from edgekd.cli import app

    monkeypatch.chdir(tmp_path)
    before = {s: signal.getsignal(s) for s in SIGNALS}
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    assert {s: signal.getsignal(s) for s in SIGNALS} == before


def test_a_ctrl_c_a_command_swallowed_does_not_stop_the_processs_later_runs():
    from edgekd import interrupts

    before = signal.getsignal(signal.SIGINT)
    with interrupts.installed():
        try:  # a library's bare except: the KeyboardInterrupt is gone, the signal recorded
            os.kill(os.getpid(), signal.SIGINT)  # os.kill runs the handler of a signal to itself at once
        except KeyboardInterrupt:
            pass
        with pytest.raises(KeyboardInterrupt):
            interrupts.raise_if_received()  # still the same command: it stops
    interrupts.raise_if_received()  # a later run in the same process: it does not
    assert signal.getsignal(signal.SIGINT) is before
