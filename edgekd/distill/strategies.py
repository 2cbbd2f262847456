"""Distillation strategies, selected by `distill.strategy` in a recipe: how the student is taught.

standard     one teacher: response term (kd/dkd) + optional feature/relation terms
ensemble     several teachers, aggregated by an explicit mode (losses.ensemble_kd)
progressive  stage k matches student layer k to teacher layer k (hint), then the next, then the logits
self         born-again generations (each student taught by the previous one, the first trained on labels)
             or deep supervision (the network's own classifier teaches auxiliary heads)
mutual       two or more students teach each other; no pre-trained teacher
blackbox     the teacher is only its outputs (a file, an exported artifact or a Python callable)

Every strategy takes the same optimizer-step budget as the scratch baseline per trained student, and
returns the student plus details for the run manifest. Strategies never touch the run directory: the
job hands them data, model factories and the (cached) teacher outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from torch import nn

from edgekd.distill.objectives import (LOGITS, AuxiliaryHeads, DeepSupervisionObjective, DistillObjective,
                                       FeatureTerm, FeatureTerms, HintObjective, MutualObjective, Peers)
from edgekd.distill.trainer import TrainResult, accuracy, fit, predict_logits
from edgekd.errors import FeatureError
from edgekd.progress import Reporter
from edgekd.recipe import DistillConfig, LossConfig
from edgekd.registry import Registry

logger = logging.getLogger(__name__)


@dataclass
class DistillJob:
    """Everything a strategy needs, independent of where it is stored."""

    config: DistillConfig
    make_student: Callable[[int], nn.Module]  # seed -> a fresh student
    teacher: Callable[[], nn.Module]  # the trained teacher, built on first call
    teacher_logits: Callable[[nn.Module, str], np.ndarray]  # (teacher, name) -> its logits on `x` (cached)
    extra_teachers: Callable[[], list[nn.Module]]  # ensemble members, trained or loaded on first call
    blackbox_logits: Callable[[], np.ndarray]  # a black-box teacher's logits on `x`
    x: np.ndarray  # the transfer set
    target: np.ndarray  # its labels, -1 where the student may not see them
    labelled_x: np.ndarray  # the labelled samples alone (born-again generation 0)
    labelled_y: np.ndarray
    in_shape: tuple[int, ...]
    num_classes: int
    steps: int
    val: tuple[np.ndarray, np.ndarray]
    seed: int
    reporter: Reporter
    distributed: bool = False

    def fit(self, model: nn.Module, objective, description: str, *, x: np.ndarray | None = None,
            target: np.ndarray | None = None, steps: int | None = None, seed: int | None = None) -> TrainResult:
        t = self.config.train
        return fit(model, self.x if x is None else x, self.target if target is None else target,
                   objective=objective, steps=self.steps if steps is None else steps, batch_size=t.batch_size,
                   lr=t.lr, weight_decay=t.weight_decay, seed=self.seed if seed is None else seed, val=self.val,
                   reporter=self.reporter, description=description, distributed=self.distributed)

    def response_params(self) -> dict[str, Any]:
        return response_params(self.config.loss)


def response_params(loss: LossConfig) -> dict[str, Any]:
    """Keyword arguments of the response loss `loss.name` from its recipe section (kd: T and α; dkd: T and
    its params; ce: its params), shared by distillation, KD recovery and quantization-aware distillation."""
    if loss.name == "kd":
        return {"temperature": loss.temperature, "alpha": loss.alpha, **loss.params}
    if loss.name == "ce":
        return dict(loss.params)
    return {"temperature": loss.temperature, **loss.params}


@dataclass
class DistillOutcome:
    student: nn.Module
    steps: int  # optimizer steps taken, over all stages / generations / peers
    seconds: float
    generation_offset: int = 1  # generations added on top of the teacher's (or from 0 without one)
    details: dict[str, Any] = field(default_factory=dict)


def uses_teacher(config: DistillConfig) -> bool:
    """Whether the strategy learns from the recipe's teacher (or a black-box one): lineage applies then."""
    if config.strategy == "mutual":
        return False
    return config.strategy != "self"


Strategy = Callable[[DistillJob], DistillOutcome]
STRATEGIES: Registry[Strategy] = Registry("distillation strategy", "distillation strategies")


def feature_terms(job: DistillJob, teacher: nn.Module | None, student: nn.Module,
                  pairs: list[tuple[str, str, str, float, dict[str, float]]]) -> tuple[FeatureTerms, list[dict]]:
    """Resolve (loss, student path, teacher path, weight, params) terms, probe shapes, build adapters.

    Adapters are inserted only where the loss compares tensors element-wise (hint, mse, cosine) and shapes
    differ; relation losses (attention, similarity, rkd) compare structure and take the raw features.
    """
    from edgekd.distill.features import check_logits_terms, match_features
    from edgekd.distill.losses import loss_kind, needs_same_shape

    for loss, *_ in pairs:
        if loss_kind(loss) != "features":
            raise FeatureError(f"'{loss}' is not a feature loss",
                               why="distill.features takes feature/relation losses",
                               fix="use hint, mse, cosine, attention, similarity or rkd there")
    check_logits_terms([(loss, s, t) for loss, s, t, _, _ in pairs], teacher, student, job.in_shape, LOGITS)
    layers = [(loss, s, t) for loss, s, t, _, _ in pairs if s != LOGITS and t != LOGITS]
    matched, adapters = (match_features(teacher, student, [(s, t) for _, s, t in layers], job.in_shape,
                                        adapt=[needs_same_shape(loss) for loss, _, _ in layers])
                         if layers else ([], nn.ModuleDict()))
    by_paths = {(m.student, m.teacher): m for m in matched}
    terms, described = [], []
    for i, (loss, s, t, weight, params) in enumerate(pairs):
        m = by_paths.get((s, t))
        key = m.key if m is not None and needs_same_shape(loss) else f"identity{i}"
        if key not in adapters:
            adapters[key] = nn.Identity()
        terms.append(FeatureTerm(loss=loss, student=s, teacher=t, weight=weight, params=dict(params), key=key))
        described.append({"loss": loss, "student": s, "teacher": t, "weight": weight,
                          "adapter": m.adapter if m is not None and needs_same_shape(loss) else "none",
                          **({"student_shape": list(m.student_shape), "teacher_shape": list(m.teacher_shape)}
                             if m is not None else {})})
    return FeatureTerms(terms, teacher, adapters), described


def _recipe_terms(job: DistillJob) -> list[tuple[str, str, str, float, dict[str, float]]]:
    return [(f.loss, f.student, f.teacher or LOGITS, f.weight, f.params) for f in job.config.features]


def _distill(job: DistillJob, student: nn.Module, teacher_logits: np.ndarray, description: str, *,
             teacher: nn.Module | None = None, ensemble: dict[str, Any] | None = None,
             steps: int | None = None) -> tuple[TrainResult, list[dict]]:
    terms, described = (feature_terms(job, teacher, student, _recipe_terms(job))
                        if job.config.features else (None, []))
    objective = DistillObjective(job.config.loss.name, job.response_params(), teacher_logits, terms, ensemble)
    objective.attach(student)
    try:
        result = job.fit(student, objective, description, steps=steps)
    finally:
        objective.close()
    return result, described


@STRATEGIES.register("standard")
def standard(job: DistillJob) -> DistillOutcome:
    """One teacher: the response term on its cached logits plus any feature/relation terms."""
    teacher = job.teacher()
    student = job.make_student(job.seed)
    result, described = _distill(job, student, job.teacher_logits(teacher, "teacher"), "distill student",
                                 teacher=teacher)
    return DistillOutcome(student, result.steps, result.seconds, details={"features": described} if described else {})


@STRATEGIES.register("ensemble")
def ensemble(job: DistillJob) -> DistillOutcome:
    """Several teachers; their outputs are combined by `distill.ensemble.mode` (see losses.ensemble_kd)."""
    cfg = job.config
    teachers = [job.teacher(), *job.extra_teachers()]
    stack = np.stack([job.teacher_logits(t, f"teacher{i}") for i, t in enumerate(teachers)])
    member_accuracy = [accuracy(predict_logits(t, job.val[0]), job.val[1]) for t in teachers]
    # the recipe accepts only loss kd here (recipe.DistillConfig): ensemble_kd is kd against the combined teachers
    spec = {"mode": cfg.ensemble.mode, "weights": cfg.ensemble.weights, **response_params(cfg.loss)}
    student = job.make_student(job.seed)
    result, described = _distill(job, student, stack, "distill student (ensemble)", teacher=teachers[0], ensemble=spec)
    return DistillOutcome(student, result.steps, result.seconds,
                          details={"teachers": len(teachers), "mode": cfg.ensemble.mode,
                                   "teacher_val_accuracy": member_accuracy, **({"features": described} if described else {})})


@STRATEGIES.register("progressive")
def progressive(job: DistillJob) -> DistillOutcome:
    """FitNets-style stages: student layer k learns teacher layer k (hint + adapter), one pair per stage,
    then the whole student learns the logits. Stages share the budget: `final_fraction` for the logits."""
    cfg = job.config.progressive
    teacher = job.teacher()
    student = job.make_student(job.seed)
    stage_budgets, final_steps = progressive_budgets(job.steps, cfg.final_fraction, len(cfg.pairs))
    steps, seconds, stages = 0, 0.0, []
    for k, ((s_path, t_path), stage_steps) in enumerate(zip(cfg.pairs, stage_budgets), start=1):
        terms, described = feature_terms(job, teacher, student, [("hint", s_path, t_path, 1.0, {})])
        objective = HintObjective(terms)
        terms.attach(student)
        try:
            result = job.fit(student, objective, f"progressive stage {k}/{len(cfg.pairs)}", steps=stage_steps)
        finally:
            terms.close()
        steps, seconds = steps + result.steps, seconds + result.seconds
        stages.append({**described[0], "steps": result.steps, "final_hint_loss": result.final_loss})
    logits = job.teacher_logits(teacher, "teacher")
    result, _ = _distill(job, student, logits, "progressive: logits", teacher=teacher, steps=final_steps)
    stages.append({"stage": "logits", "steps": final_steps})
    return DistillOutcome(student, steps + result.steps, seconds + result.seconds, details={"stages": stages})


def progressive_budgets(total: int, final_fraction: float, stages: int) -> tuple[list[int], int]:
    """(steps of each hint stage, steps of the logits stage): `total` split with nothing lost to rounding, so
    the strategy trains the scratch baseline's budget (a floor division left up to stages - 1 steps unspent).
    Each stage gets at least one step: only a budget of at most `stages` steps exceeds it. The logits stage leaves
    the hint stages their step each (a final_fraction that rounded to the whole budget added `stages` steps)."""
    final = min(max(1, round(total * final_fraction)), max(1, total - stages))
    base, extra = divmod(max(0, total - final), stages)
    return [max(1, base + (k < extra)) for k in range(stages)], final


@STRATEGIES.register("self")
def self_distill(job: DistillJob) -> DistillOutcome:
    cfg = job.config.self_distill
    return _deep_supervision(job) if cfg.mode == "deep_supervision" else _born_again(job)


def _born_again(job: DistillJob) -> DistillOutcome:
    """Born-again networks (Furlanello et al., 2018) without an outside teacher: generation 0 is the student
    trained on the labels; generation g is a fresh student taught by generation g − 1 on the transfer set,
    through its logits and through any distill.features terms (their teacher paths name generation g − 1's layers)."""
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import ResponseObjective

    cfg = job.config.self_distill
    current = job.make_student(job.seed)
    result = job.fit(current, ResponseObjective(LOSSES["ce"]), "born-again generation 0 (labels)",
                     x=job.labelled_x, target=job.labelled_y)
    steps, seconds = result.steps, result.seconds
    history = [{"generation": 0, "val_accuracy": result.val_accuracy}]
    for g in range(1, cfg.generations + 1):
        logits = predict_logits(current, job.x)
        student = job.make_student(job.seed + g)
        result, _ = _distill(job, student, logits, f"born-again generation {g}", teacher=current)
        steps, seconds = steps + result.steps, seconds + result.seconds
        history.append({"generation": g, "val_accuracy": result.val_accuracy})
        current = student
    return DistillOutcome(current, steps, seconds, generation_offset=cfg.generations,
                          details={"mode": "born_again", "generations": history})


def _deep_supervision(job: DistillJob) -> DistillOutcome:
    from edgekd.distill.features import probe_shapes, resolve

    cfg = job.config.self_distill
    student = job.make_student(job.seed)
    resolve(student, cfg.heads, role="student")
    heads = AuxiliaryHeads(probe_shapes(student, cfg.heads, job.in_shape, role="student"), job.num_classes)
    objective = DeepSupervisionObjective(student, heads, job.config.loss.temperature, job.config.loss.alpha)
    try:
        result = job.fit(student, objective, "self-distillation (deep supervision)")
    finally:
        objective.close()
    return DistillOutcome(student, result.steps, result.seconds, generation_offset=0,
                          details={"mode": "deep_supervision", "heads": cfg.heads})


@STRATEGIES.register("mutual")
def mutual(job: DistillJob) -> DistillOutcome:
    """Deep mutual learning: `peers` students of the student architecture (different seeds) trained together;
    the one with the best validation accuracy is kept."""
    peers = Peers([job.make_student(job.seed + k) for k in range(job.config.mutual.peers)])
    result = job.fit(peers, MutualObjective(job.config.loss.temperature, job.config.loss.alpha),
                     f"mutual learning ({len(peers.peers)} peers)")
    val_accuracy = [accuracy(predict_logits(p, job.val[0]), job.val[1]) for p in peers.peers]
    best = int(np.argmax(val_accuracy))
    return DistillOutcome(peers.peers[best], result.steps, result.seconds, generation_offset=0,
                          details={"peers": len(peers.peers), "peer_val_accuracy": val_accuracy, "kept_peer": best})


@STRATEGIES.register("blackbox")
def blackbox(job: DistillJob) -> DistillOutcome:
    """The teacher is only its outputs: response KD on them (feature terms need a teacher's layers)."""
    if job.config.features:
        raise FeatureError("a black-box teacher has no layers for distill.features",
                           why="black-box KD sees only the teacher's outputs",
                           fix="remove distill.features, or use the standard strategy with the teacher's weights")
    student = job.make_student(job.seed)
    result, _ = _distill(job, student, job.blackbox_logits(), "distill student (black-box)")
    return DistillOutcome(student, result.steps, result.seconds, details={"source": job.config.blackbox.source})
