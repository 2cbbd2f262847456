"""Artifact records: every exported file has an `artifact.json` beside it saying what it is.

A record carries format, precision, opset and runtime versions, input/output signature, size,
sha256, operator histogram, quantization settings, the parity check against its PyTorch model,
and its lineage (which run, which checkpoint, which teacher). Bench results name artifacts by sha256.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator

from edgekd.errors import ArtifactError, first_line, pydantic_message
from edgekd.names import PATH_COMPONENT, ArtifactPrecision
from edgekd.rundir import atomic_write, hash_obj, schema_problem, sha256_file

ARTIFACT_SCHEMA = "edgekd.artifact/1"
RECORD_NAME = "artifact.json"


class Parity(BaseModel):
    """How the exported artifact agrees with its PyTorch model on real test-split inputs."""

    reference: str
    samples: int
    agreement: float = Field(description="share of samples whose top-1 class matches the PyTorch model")
    max_abs_error: float
    mean_abs_error: float
    accuracy: float = Field(description="the artifact's own test accuracy")
    reference_accuracy: float
    per_class_accuracy: list[float]
    threshold: float
    max_abs_error_bound: float | None = Field(None, description="FP32: the largest logit error allowed")
    passed: bool
    reason: str | None = None


MODEL_SUFFIXES = ("onnx", "tflite")  # the formats edgekd exports, each its file's suffix


class Artifact(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_: str = Field(ARTIFACT_SCHEMA, alias="schema")
    # Joined to folders (results, the artifact's own): never a path of their own (see edgekd.names).
    name: str = Field(pattern=PATH_COMPONENT)
    role: str = Field(pattern=PATH_COMPONENT)
    format: Literal["onnx", "tflite"]
    precision: ArtifactPrecision
    file: str = Field(pattern=PATH_COMPONENT)
    size_bytes: int
    sha256: str = Field(description="of the model file; of the model file and its external data files together "
                        "when it has any (model_digest)")
    parameters: int | None = None
    opset: int | None = None
    runtime_versions: dict[str, str] = Field(default_factory=dict)
    inputs: list[dict[str, Any]] = Field(default_factory=list)
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    op_histogram: dict[str, int] = Field(default_factory=dict)
    layout_ops: int = Field(0, description="Transpose operators (what NCHW→NHWC conversion adds)")
    weight_bits: dict[str, Any] = Field(default_factory=dict, description="stored constant bytes by width")
    quantization: dict[str, Any] | None = None
    parity: Parity | None = None
    lineage: dict[str, Any] = Field(default_factory=dict)
    output_checks: dict[str, Any] = Field(default_factory=dict, description="comparisons of outputs beyond the "
                                          "first with PyTorch (text: the sentence embedding's cosine)")
    text_input: dict[str, Any] | None = Field(None, description="text models: how a sentence becomes the input "
                                              "ids (the tokenizer folder beside the model file, the length the ids "
                                              "are padded or cut to, the pad id) and one sentence with its ids")
    external_data: list[str] = Field(default_factory=list, description="ONNX: the files its weights are in, "
                                     "relative to the model file (a model saved with external data)")
    created_at: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    directory: Path | None = Field(None, exclude=True)
    _file_digests: dict[str, str] = PrivateAttr(default_factory=dict)  # file name -> sha256, hashed once

    @field_validator("file")
    @classmethod
    def _file_of_its_format(cls, file: str, info: ValidationInfo) -> str:
        """A hand-edited format (tflite for a .onnx file) would reach the device's runtime as a load failure.
        Only a suffix of another format contradicts it: a model file may have none, or its own (a tool's .bin)."""
        fmt = info.data.get("format")
        suffix = Path(file).suffix.lstrip(".")
        if fmt and suffix in MODEL_SUFFIXES and suffix != fmt:
            raise ValueError(f"must be a .{fmt} file, as the record's format is {fmt}, got {file!r}")
        return file

    @field_validator("inputs")
    @classmethod
    def _inputs_with_shapes(cls, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Synthetic inputs are made from these shapes: a shape of another kind would make data of a wrong one."""
        for entry in inputs:
            shape = entry.get("shape")
            if not isinstance(entry.get("name"), str) or not isinstance(shape, list) or not all(
                    d is None or (isinstance(d, (int, str)) and not isinstance(d, bool)) for d in shape):
                raise ValueError("each input must have a `name` and a `shape` (a list of sizes or dimension names), "
                                 f"got {entry!r}")
        return inputs

    @property
    def path(self) -> Path:
        if self.directory is None:
            raise ArtifactError(f"artifact '{self.name}' has no location", fix="load it with Artifact.load(PATH)")
        return self.directory / self.file

    @property
    def ok(self) -> bool:
        return self.parity is not None and self.parity.passed

    def save(self) -> Path:
        """Write artifact.json beside the model file (atomically)."""
        record = self.model_dump(mode="json", by_alias=True)
        return atomic_write(self.path.parent / RECORD_NAME, json.dumps(record, indent=2) + "\n")

    @classmethod
    def load(cls, location: str | Path) -> "Artifact":
        """Load a record from an artifact folder, its artifact.json, or the model file beside it."""
        location = Path(location)
        record_path = location / RECORD_NAME if location.is_dir() else location.parent / RECORD_NAME
        if location.name == RECORD_NAME:
            record_path = location
        if not record_path.is_file():
            raise ArtifactError(
                f"no artifact record for {location}",
                why=f"{record_path} does not exist",
                fix="give an artifact produced by `edgekd run`/`edgekd export` (a folder with artifact.json), "
                    "or benchmark a bare model file, which edgekd describes on the fly",
            )
        try:
            data = json.loads(record_path.read_text(encoding="utf-8"))
            problem = schema_problem(data, ARTIFACT_SCHEMA)
            if problem:
                raise ArtifactError(f"cannot read the artifact record {record_path}", why=problem,
                                    fix="benchmark it with the edgekd that exported it (or a newer one: "
                                        "pip install -U edgekd), or re-export the artifact with this one")
            artifact = cls.model_validate(data)
        except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"corrupt artifact record {record_path}", why=_first_problem(exc),
                                fix="re-export the artifact") from None
        artifact.directory = record_path.parent
        return artifact

    def file_digests(self) -> dict[str, str]:
        """sha256 of the model file and of each external data file, by name (each file, possibly GBs, is read
        once per record)."""
        for name in [self.file, *self.external_data]:
            if name not in self._file_digests:
                self._file_digests[name] = sha256_file(self.path.parent / name)
        return self._file_digests

    def model_digest(self) -> str:
        """What the record's sha256 is: the model file's, or, with external data, one digest of all its files
        (a model file alone is the same file when only its weights changed, and results, resume and history
        are keyed on this)."""
        digests = self.file_digests()
        if not self.external_data:
            return digests[self.file]
        return hash_obj({"model": digests[self.file], "external_data": {f: digests[f] for f in self.external_data}})

    def verify_file(self) -> None:
        """Check that the model file (and its external data files) still match the record (sha256)."""
        for name in [self.file, *self.external_data]:
            if not (self.path.parent / name).is_file():
                raise ArtifactError(f"artifact file missing: {self.path.parent / name}", fix="re-export the artifact")
        digest = self.model_digest()
        if digest != self.sha256:
            raise ArtifactError(
                f"artifact file {self.path} does not match its record",
                why=f"sha256 is {digest[:12]}…, the record says {self.sha256[:12]}…",
                fix="re-export the artifact (edgekd run --force export)",
            )


def _first_problem(exc: Exception) -> str:
    """pydantic's first complaint with its field ("sha256: Field required"), not "1 validation error for Artifact"."""
    if isinstance(exc, ValidationError) and exc.errors():
        error = exc.errors()[0]
        where = '.'.join(map(str, error['loc'])) or 'the record'
        if error["type"] == "string_pattern_mismatch":
            return f"{where}: must be one file name, not a path, got {error['input']!r}"
        return f"{where}: {pydantic_message(error)}"
    return first_line(exc)
