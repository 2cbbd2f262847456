"""Multi-process training: `edgekd run` under torchrun (2 processes, DDP on gloo) matches one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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
    # rank 0 alone prints the table and the run's paths: rank 1 ends before the export, so a line of its would
    # announce a report not yet written (or show an earlier run's table) in the middle of the log
    assert two.stdout.count("run directory:") == 1, two.stdout

    manifests = {k: json.loads((tmp_path / k / "ddp" / "manifest.json").read_text())["stages"] for k in ("one", "two")}
    assert set(manifests["two"]) == set(manifests["one"])  # rank 0 wrote every stage; the other rank wrote nothing else
    x_test = load_data("digits", label_fraction=0.1).x_test
    for stage, role in (("distill", "student"), ("scratch", "scratch")):
        acc_one = manifests["one"][stage]["metrics"]["test_accuracy"]
        acc_two = manifests["two"][stage]["metrics"]["test_accuracy"]
        assert abs(acc_one - acc_two) <= 0.03, (stage, acc_one, acc_two)
        agreement = (_predictions(tmp_path / "one" / "ddp", role, x_test)
                     == _predictions(tmp_path / "two" / "ddp", role, x_test)).mean()
        # Not bit-identical: the ranks' gradients are summed in another order (float rounding).
        assert agreement >= 0.95, (role, agreement)
    assert (tmp_path / "two" / "ddp" / "artifacts" / "student-onnx-fp32" / "model.onnx").is_file()


# Runs under torchrun (2 ranks, gloo): every objective is trained for a few steps by one process (distributed=False)
# and by DDP (distributed=True) on batches of 9 rows (shares of 5 and 4) where the first batch's labelled rows all
# fall in rank 0's share; the gradients of every step (model and objective parameters; which ones have none), the
# logged losses and the trained weights must be the single-process ones. The progressive strategy runs whole (two
# hint stages, which leave later student layers without a gradient, then the logits) with weight decay, so a
# parameter that got a zero gradient instead of none would move. Each rank writes the largest differences it saw
# to DIFFS-<rank>.json. BatchNorm is the known exception (each rank normalises its own share): the worker records
# what one DDP step does with it, and whether torch still refuses SyncBatchNorm on the CPU, in BN-<rank>.json.
WORKER = r"""
import json, sys
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from edgekd.distill.losses import LOSSES
from edgekd.distill.objectives import (AuxiliaryHeads, DeepSupervisionObjective, DistillObjective, FeatureTerm,
                                       FeatureTerms, MutualObjective, Peers)
from edgekd.distill.trainer import ResponseObjective, _batches, fit

dist.init_process_group("gloo")
torch.set_num_threads(1)
N, C, STEPS, SEED = 9, 3, 3, 0
rng = np.random.default_rng(1)
x = rng.standard_normal((N, 1, 6, 6)).astype(np.float32)
first = next(_batches(N, N, 1, np.random.default_rng(SEED)))
y = np.full(N, -1, dtype=np.int64)
y[first[0::2][:2]] = [0, 2]  # the first batch: two labelled rows, both in rank 0's share
teacher_logits = rng.standard_normal((N, C)).astype(np.float32) * 3
ensemble_logits = rng.standard_normal((2, N, C)).astype(np.float32) * 3


def net(width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(width * 4, C))


def features(student):
    from edgekd.distill.features import match_features

    torch.manual_seed(7)
    teacher = net(6).eval()
    pairs, adapters = match_features(teacher, student, [("1", "1")], (1, 6, 6))
    adapters["identity"] = nn.Identity()
    terms = [FeatureTerm("hint", "1", "1", 1.0, {}, pairs[0].key),
             FeatureTerm("cosine", "1", "1", 0.5, {}, pairs[0].key),
             FeatureTerm("attention", "3", "3", 2.0, {"p": 2.0}, "identity"),
             FeatureTerm("similarity", "3", "3", 3.0, {}, "identity"),
             FeatureTerm("rkd", "5", "5", 1.0, {}, "identity"),
             FeatureTerm("mse", "logits", "logits", 0.1, {}, "identity")]
    return FeatureTerms(terms, teacher, adapters)


def objectives():
    yield "kd", net, lambda m: ResponseObjective(LOSSES["kd"], teacher_logits, {"temperature": 4.0, "alpha": 0.5})
    yield "dkd", net, lambda m: ResponseObjective(LOSSES["dkd"], teacher_logits, {"temperature": 2.0, "beta": 4.0})
    yield "ce", net, lambda m: ResponseObjective(LOSSES["ce"])
    yield "features", net, lambda m: DistillObjective("kd", {"temperature": 4.0, "alpha": 0.5}, teacher_logits,
                                                      features(m)).attach(m)
    yield "ensemble", net, lambda m: DistillObjective("kd", {}, ensemble_logits, None,
                                                      {"mode": "loss_average", "temperature": 3.0, "alpha": 0.7})
    yield "mutual", lambda: Peers([net(), net(5)]), lambda m: MutualObjective(3.0, 0.5)
    yield "deep_supervision", net, lambda m: DeepSupervisionObjective(
        m, AuxiliaryHeads({"1": (4, 6, 6), "5": (16,)}, C), 3.0, 0.5)


def recorder(grads, params):
    return lambda: grads.append([p.grad.clone() if p.grad is not None else None for p in params])


def train(make_model, make_objective, distributed):
    torch.manual_seed(3)
    model = make_model()
    objective = make_objective(model)
    grads = []
    result = fit(model, x, y, objective=objective, steps=STEPS, batch_size=N, lr=1e-2, weight_decay=0.0, seed=SEED,
                 distributed=distributed, after_step=recorder(grads, [*model.parameters(), *objective.parameters()]))
    getattr(objective, "close", lambda: None)()
    return grads, [h["loss"] for h in result.history], list(model.parameters())


def train_progressive(distributed):
    from edgekd.distill import strategies
    from edgekd.progress import SilentReporter
    from edgekd.recipe import DistillConfig

    real_fit, grads, losses = strategies.fit, [], []

    def recording_fit(model, *args, objective, **kwargs):  # the real fit, recording every step's gradients
        result = real_fit(model, *args, objective=objective, **kwargs,
                          after_step=recorder(grads, [*model.parameters(), *objective.parameters()]))
        losses.extend(h["loss"] for h in result.history)
        return result

    torch.manual_seed(7)
    teacher = net(6).eval()
    config = DistillConfig(strategy="progressive", progressive={"pairs": [["0", "0"], ["2", "2"]], "final_fraction": 0.25},
                           train={"epochs": 1, "batch_size": N, "lr": 1e-2, "weight_decay": 0.1})
    job = strategies.DistillJob(
        config=config, make_student=lambda seed: (torch.manual_seed(seed), net())[1], teacher=lambda: teacher,
        teacher_logits=lambda t, name: teacher_logits, extra_teachers=list, blackbox_logits=None, x=x, target=y,
        labelled_x=x, labelled_y=y, in_shape=(1, 6, 6), num_classes=C, steps=8, val=(x, np.zeros(N, dtype=np.int64)),
        seed=SEED, reporter=SilentReporter(), distributed=distributed)
    strategies.fit = recording_fit
    try:
        outcome = strategies.progressive(job)
    finally:
        strategies.fit = real_fit
    assert [s["steps"] for s in outcome.details["stages"]] == [3, 3, 2]  # the DDP wrapper takes steps 2 and 3
    return grads, losses, list(outcome.student.parameters())


def grad_difference(a, b):
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")  # a gradient on one side only
    return float((a - b).abs().max())


runs = [(name, lambda d, m=make_model, o=make_objective: train(m, o, d)) for name, make_model, make_objective in objectives()]
diffs = {}
for name, run in [*runs, ("progressive", train_progressive)]:
    one, one_loss, one_weights = run(False)
    two, two_loss, two_weights = run(True)
    scale = max(float(g.abs().max()) for step in one for g in step if g is not None)
    diffs[name] = {"grad": max(grad_difference(a, b) for s1, s2 in zip(one, two) for a, b in zip(s1, s2)) / scale,
                   "steps": [len(one), len(two)], "loss": max(abs(a - b) for a, b in zip(one_loss, two_loss)),
                   "weights": max(float((a - b).abs().max()) for a, b in zip(one_weights, two_weights)),
                   "scale": scale, "without_grad": sum(g is None for g in one[0])}
with open(sys.argv[1] + f"-{dist.get_rank()}.json", "w") as fh:
    json.dump(diffs, fh)


class Notes:
    def __init__(self):
        self.notes = []

    def task(self, description, total):
        from edgekd.progress import SilentReporter
        return SilentReporter().task(description, total)

    def note(self, message):
        self.notes.append(message)


def bn_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, C))


def bn_objective():
    return ResponseObjective(LOSSES["kd"], teacher_logits, {"temperature": 4.0, "alpha": 0.5})


def bn_train(distributed, reporter=None):
    # two steps (the second through the DDP wrapper): each step's gradients and the weights it started from
    model, grads, weights = bn_net(), [], []
    weights.append([p.detach().clone() for p in model.parameters()])
    fit(model, x, y, objective=bn_objective(), steps=2, batch_size=N, lr=1e-2, weight_decay=0.0, seed=SEED,
        distributed=distributed, reporter=reporter,
        after_step=lambda: (recorder(grads, list(model.parameters()))(),
                            weights.append([p.detach().clone() for p in model.parameters()])))
    return grads, weights, model[1].running_mean.clone()


def shares_alone(weights, batch):
    # one process, each rank's share of `batch` normalised by itself (its loss part on its rows alone, averaged
    # over the ranks): the gradient at `weights`
    from edgekd.distill.batch_share import batch_share
    from edgekd.distill.trainer import _share_of

    model, y_t = bn_net().train(), torch.from_numpy(y)
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights):
            p.copy_(w)
    total = 0
    for rank in range(2):
        share, index = _share_of(batch, y_t, rank, 2), torch.from_numpy(batch[rank::2])
        with batch_share(share):
            total = total + bn_objective()(model, torch.from_numpy(x)[index], y_t[index], index) / 2
    total.backward()
    return [p.grad for p in model.parameters()]


def rank0_running_mean(weights, batches):
    # BatchNorm's running mean after seeing rank 0's share of each batch, at the weights of that step
    model = bn_net().train()
    with torch.no_grad():
        for w, batch in zip(weights, batches):
            for p, v in zip(model.parameters(), w):
                p.copy_(v)
            model(torch.from_numpy(x[batch[0::2]]))
    return model[1].running_mean


def refused(make):
    try:
        make()
    except ValueError as exc:
        return str(exc)
    return None


notes = Notes()
one, _, _ = bn_train(False)
two, weights, running_mean = bn_train(True, notes)
batches = list(_batches(N, N, 2, np.random.default_rng(SEED)))
alone = [shares_alone(w, b) for w, b in zip(weights, batches)]
scale = max(float(g.abs().max()) for g in one[0])
bn = {"vs_one_process": max(float((a - b).abs().max()) for a, b in zip(one[0], two[0])) / scale,
      "vs_shares_alone": max(float((a - b).abs().max()) for s1, s2 in zip(alone, two) for a, b in zip(s1, s2)) / scale,
      "running_mean_vs_rank0_shares": float((running_mean - rank0_running_mean(weights, batches)).abs().max()),
      "notes": notes.notes,
      "ddp_refuses_sync_bn": refused(lambda: torch.nn.parallel.DistributedDataParallel(
          nn.SyncBatchNorm.convert_sync_batchnorm(bn_net()))),
      "sync_bn_refuses_cpu": refused(lambda: nn.SyncBatchNorm(4).train()(torch.zeros(2, 4, 3, 3)))}
with open(sys.argv[2] + f"-{dist.get_rank()}.json", "w") as fh:
    json.dump(bn, fh)
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def worker_output(tmp_path_factory):
    """Runs WORKER once under torchrun (2 ranks): {"diffs": [rank 0's, rank 1's], "bn": [...]}."""
    tmp_path = tmp_path_factory.mktemp("ddp_worker")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", str(script), str(tmp_path / "DIFFS"),
                          str(tmp_path / "BN")], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return {kind: [json.loads((tmp_path / f"{kind.upper()}-{rank}.json").read_text()) for rank in (0, 1)]
            for kind in ("diffs", "bn")}


def test_ddp_gradients_equal_the_single_process_gradients_with_uneven_shares_and_labels(worker_output):
    for rank, diffs in enumerate(worker_output["diffs"]):
        assert set(diffs) == {"kd", "dkd", "ce", "features", "ensemble", "mutual", "deep_supervision", "progressive"}
        for name, d in diffs.items():
            assert d["scale"] > 0 and d["grad"] < 1e-5 and d["loss"] < 1e-5 and d["weights"] < 1e-5, (rank, name, d)
            assert d["steps"][0] == d["steps"][1] > 0, (rank, name, d)
        assert diffs["progressive"]["without_grad"] == 4  # stage 1 trains conv 0 only: conv 2 and the linear idle


def test_ddp_batch_norm_normalises_each_share_alone_and_says_so(worker_output):
    """What README states: torch refuses SyncBatchNorm on the CPU, so under DDP each rank's BatchNorm normalises
    its own share. The DDP gradient is then exactly one process's with each share normalised alone, not the
    whole batch's, and the checkpointed running statistics (rank 0's) come from rank 0's shares; the run says so.
    If torch starts accepting SyncBatchNorm on the CPU, the refusal checks fail: convert BatchNorm then."""
    for rank, bn in enumerate(worker_output["bn"]):
        assert "only work with GPU modules" in (bn["ddp_refuses_sync_bn"] or ""), (rank, bn)
        assert "expected input tensor to be on GPU" in (bn["sync_bn_refuses_cpu"] or ""), (rank, bn)
        assert bn["vs_shares_alone"] < 1e-5 and bn["vs_one_process"] > 1e-2, (rank, bn)
        assert len(bn["notes"]) == 1 and "BatchNorm" in bn["notes"][0], (rank, bn)
    assert worker_output["bn"][0]["running_mean_vs_rank0_shares"] < 1e-6
