"""Export text models (teacher with head, students): one int64 input `input_ids`, two outputs `logits` and
`embedding`; ONNX with dynamic batch and sequence length, TFLite at a fixed [1, length].

Quantization reuses the format backends; every artifact is then checked against its PyTorch model on
held-out sentences: class agreement (the usual parity record) and the embedding's cosine (output_checks).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import ExportError, first_line
from edgekd.export.formats import ExportOptions
from edgekd.export.onnx import check_fits_one_file
from edgekd.export.quiet import captured_output
from edgekd.progress import Reporter, SilentReporter
from edgekd.rundir import atomic_path

if TYPE_CHECKING:
    from torch import nn

INPUT = "input_ids"
OUTPUTS = ("logits", "sentence_embedding")
TOKENIZER_DIR = "tokenizer"  # beside each text model file: the teacher's tokenizer files
TOKENIZER_JSON = "tokenizer.json"  # what Hugging Face `tokenizers` reads; made when the teacher has none
_NOISY = ("torch.onnx", "torch._dynamo", "torch.export", "torch.fx", "onnxscript")
# Mean cosine of an artifact's embeddings to its PyTorch model's, below which it fails parity.
MIN_EMBEDDING_COSINE = {"fp32": 0.999, "int8_dynamic": 0.98, "int8_static": 0.98, "int4": 0.95}


def _example(length: int):
    import torch

    # Batch 2 and a non-pad token everywhere: a batch-1 example would specialise the batch dimension to 1.
    return (torch.ones(2, length, dtype=torch.int64),)


def export_text_onnx(model: "nn.Module", length: int, path: Path, *, opset: int) -> Path:
    """FP32 ONNX with dynamic batch and sequence length (up to the model's position table).

    Not passed through onnxslim: it recurses past Python's limit on the BERT teacher's graph, and the
    exporter's own optimizer (optimize=True) already folds what it would."""
    import onnx
    import torch

    check_fits_one_file(model)
    model.eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("length", min=2, max=length)
    with captured_output(*_NOISY):
        try:
            program = torch.onnx.export(model, _example(length), dynamo=True, input_names=[INPUT],
                                        output_names=list(OUTPUTS), dynamic_shapes=({0: batch, 1: seq},),
                                        opset_version=opset, verbose=False, optimize=True)
        except Exception as exc:  # the exporter raises many types; all mean "cannot export"
            raise ExportError(f"text model '{type(model).__name__}' cannot be exported to ONNX",
                              why=first_line(exc), fix="report the model; its forward must take one int64 tensor "
                              "of token ids and return (logits, embedding)") from None
        with atomic_path(path) as tmp:
            program.save(str(tmp))
            onnx.checker.check_model(str(tmp))
    return path


def export_text_tflite(model: "nn.Module", length: int, path: Path) -> Path:
    """FP32 .tflite taking input_ids [1, length] and returning {logits, embedding}."""
    import torch

    from edgekd.export.tflite import SIGNATURE, _conversion_error, _import_converter, _quiet

    class TextSignature(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
            logits, embedding = self.inner(input_ids)
            return {"logits": logits, "sentence_embedding": embedding}

    litert_torch = _import_converter()
    sample = {INPUT: torch.ones(1, length, dtype=torch.int64)}
    with _quiet() as log:
        try:
            content = litert_torch.signature(SIGNATURE, TextSignature(model.eval()).eval(),
                                             sample_kwargs=sample).convert().model_content()
        except Exception as exc:
            raise _conversion_error(model, exc, log.getvalue()) from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
    return path


def write_text_floor(path: Path, length: int, *, opset: int) -> Path:
    """The runtime's per-call floor for a text model: token ids in, the same ids out, no operator (an Identity
    node in ONNX; in TFLite the output is the input tensor, int32 as the converter narrows text models' ids)."""
    if path.suffix == ".onnx":
        from edgekd.export.onnx import write_identity_model

        return write_identity_model(path, (length,), opset, input_name=INPUT, int64=True)
    import torch

    from edgekd.export.tflite import SIGNATURE, _import_converter

    class IdsBack(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
            return {INPUT: input_ids}

    sample = {INPUT: torch.ones(1, length, dtype=torch.int64)}
    content = _import_converter().signature(SIGNATURE, IdsBack().eval(), sample_kwargs=sample).convert()
    with atomic_path(path) as tmp:
        tmp.write_bytes(content.model_content())
    return path


def run_text_artifact(path: Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embeddings) of an exported text model over int64 ids, one row at a time for TFLite."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out = [session.run(list(OUTPUTS), {INPUT: ids[i:i + 64]}) for i in range(0, len(ids), 64)]
        return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])
    from edgekd.export.tflite import _interpreter

    interpreter = _interpreter(path)
    runner = interpreter.get_signature_runner()
    dtype = runner.get_input_details()[INPUT]["dtype"]  # the converter narrows int64 ids to int32
    rows = [runner(**{INPUT: ids[i:i + 1].astype(dtype)}) for i in range(len(ids))]
    return np.concatenate([r["logits"] for r in rows]), np.concatenate([r["sentence_embedding"] for r in rows])


def text_parity(path: Path, precision: str, reference: tuple[np.ndarray, np.ndarray], ids: np.ndarray,
                labels: np.ndarray, *, num_classes: int, min_agreement: float, role: str):
    """The parity record (class agreement with PyTorch) and the embedding check, folded into one verdict."""
    from edgekd.export.verify import max_rel_error_for, parity

    logits, embeddings = run_text_artifact(path, ids)
    check = parity(logits, reference[0], labels, num_classes=num_classes, threshold=min_agreement,
                   reference_name=f"PyTorch {role} (fp32)",
                   max_rel_error=max_rel_error_for(precision))
    from edgekd.text.metrics import unit

    cos = np.sum(unit(embeddings) * unit(reference[1]), axis=1)
    minimum = MIN_EMBEDDING_COSINE.get(precision, 0.95)
    embedding = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "threshold": minimum}
    if check.passed and cos.mean() < minimum:
        check = check.model_copy(update={"passed": False, "reason": f"embedding cosine to PyTorch {cos.mean():.4f} "
                                                                    f"is below {minimum}"})
    return check, {"embedding": embedding}


def export_text_model(model: "nn.Module", *, role: str, formats: list[str], precisions: list[str], out_root: Path,
                      length: int, ids: np.ndarray, labels: np.ndarray, num_classes: int, options: ExportOptions,
                      min_agreement: float, min_agreement_int4: float, lineage: dict[str, Any],
                      text_input: dict[str, Any] | None = None, reporter: Reporter | None = None) -> list:
    """Every format × precision of one text model, each checked against PyTorch on `ids` (held-out)."""
    from edgekd.exporter import check_finite_weights, export_steps, save_artifact
    from edgekd.models import count_parameters
    from edgekd.text.train import predict

    reporter = reporter or SilentReporter()
    check_finite_weights(model, role)
    reference = predict(model, ids)
    artifacts: list = []
    for step in export_steps(role, formats, precisions, out_root, reporter, artifacts):
        started = time.perf_counter()
        quantization = None
        if step.precision == "fp32":
            (export_text_onnx(model, length, step.path, opset=options.opset) if step.fmt == "onnx"
             else export_text_tflite(model, length, step.path))
        else:
            quantization = step.backend.quantize(step.fp32_path, step.path, step.precision, options)
            if step.fmt == "onnx" and step.precision.startswith("int8"):
                quantization = {**quantization, "gather_tables_int8": _tables_int8(step.path)}
        check, extra = text_parity(step.path, step.precision, reference, ids, labels, num_classes=num_classes,
                                   min_agreement=min_agreement_int4 if step.precision == "int4" else min_agreement,
                                   role=role)
        artifacts.append(save_artifact(
            step.backend, step.path, reporter, name=step.name, role=role, precision=step.precision,
            parameters=count_parameters(model), quantization=quantization, parity=check, output_checks=extra,
            text_input=text_input,
            lineage={**lineage, "conversion_seconds": round(time.perf_counter() - started, 3),
                     "derived_from": step.derived_from(role)}))
    return artifacts


def text_input_record(length: int, pad_id: int, sentence: str, ids: np.ndarray) -> dict[str, Any]:
    """What an app needs to feed an exported text model as the run did (artifact.json's `text_input`), with one
    held-out sentence and its ids: an app checks its tokenizer against them, and `edgekd bench` times them."""
    return {"tokenizer": TOKENIZER_DIR, "input": INPUT, "length": length, "pad_id": pad_id, "padding": "right",
            "truncation": "to `length` tokens, special tokens included",
            "embedding_output": OUTPUTS[1], "embedding_normalized": True,
            "example": {"sentence": sentence, "ids": [int(i) for i in ids]}}


def ship_tokenizer(teacher_folder: Path, artifact_folder: Path, made_json: str | None = None) -> list[Path]:
    """Copy the teacher folder's tokenizer files into the artifact's `tokenizer/` folder (each atomically) and
    return them: a text model's input is token ids, and an app must make exactly the ids the run made, with no
    path back to a teacher folder on the machine that exported it.

    For a teacher folder without tokenizer.json (only vocab.txt, say) the caller passes `made_json`
    (tokenizer_json), shipped as tokenizer.json: Hugging Face `tokenizers`, which the README's example uses,
    reads no other file."""
    import shutil

    from edgekd.text.teacher import tokenizer_files

    folder = artifact_folder / TOKENIZER_DIR
    folder.mkdir(exist_ok=True)
    shipped = []
    for source in tokenizer_files(teacher_folder):
        with atomic_path(folder / source.name) as tmp:
            shutil.copyfile(source, tmp)
        shipped.append(folder / source.name)
    if made_json is not None:
        with atomic_path(folder / TOKENIZER_JSON) as tmp:
            tmp.write_text(made_json, encoding="utf-8")
        shipped.append(folder / TOKENIZER_JSON)
    for stale in set(folder.iterdir()) - set(shipped):  # a file of the tokenizer an earlier export shipped
        stale.unlink()
    return sorted(shipped)


def tokenizer_json(tokenizer: Any) -> str | None:
    """A transformers tokenizer (the one that made the run's ids) as a Hugging Face `tokenizers` JSON document;
    None for one without a fast (Rust) tokenizer behind it."""
    return tokenizer.backend_tokenizer.to_str() if getattr(tokenizer, "is_fast", False) else None


def _tables_int8(path: Path) -> int:
    """Store the embedding tables of an INT8 ONNX file as int8 too (onnxruntime's quantizer leaves them FP32)."""
    import onnx

    from edgekd.export.onnx_int4 import gather_tables_lowbit

    model = onnx.load(str(path))
    tables = gather_tables_lowbit(model, 8)
    if tables:
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
            onnx.checker.check_model(str(tmp))
    return tables
