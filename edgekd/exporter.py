"""Export a trained PyTorch model to every requested precision, each verified against the model.

An artifact whose parity check fails is kept on disk for inspection but its record says
`parity.passed: false` with the reason; nothing downstream treats it as good.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from edgekd.errors import CheckpointError, ExportError, OutputDirError, RecipeError
from edgekd.export.artifact import Artifact
from edgekd.export.formats import FORMATS, ExportOptions
from edgekd.export.verify import max_rel_error_for, parity
from edgekd.names import PATH_COMPONENT
from edgekd.progress import Reporter, SilentReporter, usable_reporter
from edgekd.recipe import OPSETS
from edgekd.rng import kept_global_rngs
from edgekd.rundir import exclusive_folder, process_temp_dir, remove_orphan_temp_files, sha256_file

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8_static", "int8_dynamic", "int4")


def runtime_versions(fmt: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    packages = {"onnx": ("torch", "onnx", "onnxruntime", "onnxslim", "onnxscript", "numpy"),
                "tflite": ("torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "numpy")}[fmt]
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def artifact_name(role: str, fmt: str, precision: str) -> str:
    return f"{role}-{fmt}-{precision}"


def _record(backend, path: Path, **fields: Any) -> Artifact:
    """An Artifact for a model file just written: size, sha256, signature, operators, weight storage."""
    info = backend.inspect(path)
    return Artifact(format=backend.name, file=path.name, size_bytes=path.stat().st_size, sha256=sha256_file(path),
                    runtime_versions=runtime_versions(backend.name), inputs=info.inputs, outputs=info.outputs,
                    op_histogram=info.op_histogram, layout_ops=info.layout_ops, weight_bits=info.weight_bits,
                    opset=info.opset, directory=path.parent, **fields)


@dataclass(frozen=True)
class ExportStep:
    """One artifact to make: its backend, precision, name and file, and the format's FP32 file it starts from."""

    backend: Any
    fmt: str
    precision: str
    name: str
    path: Path
    fp32_path: Path

    def derived_from(self, role: str) -> str | None:
        return None if self.precision == "fp32" else artifact_name(role, self.fmt, "fp32")


def export_steps(role: str, formats: list[str], precisions: list[str], out_root: Path, reporter: Reporter,
                 artifacts: list[Artifact]) -> Iterator[ExportStep]:
    """Every format × precision of `role`, FP32 first in each format (the quantizers start from it), with a
    progress bar. A format's FP32 file that was not asked for is made in a scratch folder, not among the
    deliverables (where it replaced, then deleted, an FP32 artifact an earlier export had left there), and its
    record is dropped from `artifacts`, which the caller fills."""
    ordered = ["fp32"] + [p for p in precisions if p != "fp32"]
    task = reporter.task(f"export {role}", len(ordered) * len(formats))
    with contextlib.ExitStack() as scratch:
        fp32_root = out_root if "fp32" in precisions else Path(scratch.enter_context(process_temp_dir("export")))
        for fmt in formats:
            backend = FORMATS[fmt]()
            fp32_path = fp32_root / artifact_name(role, fmt, "fp32") / f"model{backend.suffix}"
            for precision in ordered:
                name = artifact_name(role, fmt, precision)
                path = fp32_path if precision == "fp32" else out_root / name / f"model{backend.suffix}"
                remove_orphan_temp_files(path.parent, recursive=False)  # a killed export's (SIGKILL) half files
                with _unfinished_removed(path):
                    yield ExportStep(backend, fmt, precision, name, path, fp32_path)
                task.advance(1)
            artifacts[:] = [a for a in artifacts if a.directory is None or a.directory.parent == out_root]
    task.close()


@contextlib.contextmanager
def _unfinished_removed(path: Path) -> Iterator[None]:
    """An artifact folder whose model file this step wrote but whose record it did not (a failure, Ctrl-C) is
    removed: a model file without its record (or beside the record of the file it replaced) was left behind."""
    before = path.stat().st_mtime_ns if path.is_file() else None
    try:
        yield
    except BaseException:
        record = path.parent / "artifact.json"
        written = path.is_file() and path.stat().st_mtime_ns != before
        if written and not (record.is_file() and record.stat().st_mtime_ns >= path.stat().st_mtime_ns):
            import shutil

            shutil.rmtree(path.parent, ignore_errors=True)
        raise


def save_artifact(backend, path: Path, reporter: Reporter | None = None, **fields: Any) -> Artifact:
    """Write the record of a model file just made; a failed parity check is kept, and said out loud."""
    artifact = _record(backend, path, **fields)
    artifact.save()
    check = artifact.parity
    if check is not None and not check.passed:
        # Said once: on the reporter the user watches, else through logging (the Python API's reporter is silent).
        # Both printed it twice on the command line, the logging copy through Python's last-resort handler.
        if reporter is not None and not isinstance(reporter, SilentReporter):
            reporter.note(f"[warning] {artifact.name} FAILED parity: {check.reason}")
        else:
            logger.warning("%s failed parity: %s", artifact.name, check.reason)
    return artifact


def export_model(
    model: "nn.Module",
    *,
    role: str,
    formats: list[str],
    precisions: list[str],
    out_root: Path,
    in_shape: tuple[int, ...],
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    options: ExportOptions,
    min_agreement: float,
    min_agreement_int4: float,
    lineage: dict[str, Any],
    reporter: Reporter | None = None,
    x_select: np.ndarray | None = None,
    select_rows: str = "validation split",
) -> list[Artifact]:
    """Export `model` in every format × precision, check parity on (x_test, y_test), write records.

    Quantized artifacts start from the format's FP32 file; when FP32 itself is not asked for, that file
    is removed afterwards (it is not a deliverable). The mixed-precision fallback of ONNX INT8 decides on
    `x_select` (named `select_rows`; default: the calibration rows), never on the test rows it reports on.
    """
    from edgekd.distill.trainer import predict_logits
    from edgekd.models import count_parameters

    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise RecipeError(f"unknown precision(s): {', '.join(unknown)}", why=f"known: {', '.join(PRECISIONS)}",
                          fix="use known ones (--precision on the command line, export.targets in a recipe)")
    reporter = reporter or SilentReporter()
    check_finite_weights(model, role)
    reference = predict_logits(model, x_test)
    selection = _selection(model, options, x_select, select_rows)
    artifacts: list[Artifact] = []
    for step in export_steps(role, formats, precisions, out_root, reporter, artifacts):
        backend, fmt, precision, name, path, fp32_path = (step.backend, step.fmt, step.precision, step.name,
                                                          step.path, step.fp32_path)
        started = time.perf_counter()
        quantization = None
        if precision == "fp32":
            backend.export_fp32(model, in_shape, path, options)
        else:
            quantization = backend.quantize(fp32_path, path, precision, options)
        seconds = time.perf_counter() - started
        threshold = min_agreement_int4 if precision == "int4" else min_agreement

        onnx_int8 = fmt == "onnx" and precision in ("int8_static", "int8_dynamic")
        if onnx_int8 and options.mixed_precision_fallback:
            quantization = _mixed_precision(backend, fp32_path, path, precision, options, quantization,
                                            selection, threshold, reporter, name)
            seconds = time.perf_counter() - started
        check = parity(backend.predict(path, x_test), reference, y_test, num_classes=num_classes, threshold=threshold,
                       reference_name=f"PyTorch {role} (fp32)", max_rel_error=max_rel_error_for(precision))
        if onnx_int8:
            quantization = {**(quantization or {}), "layer_errors": _layer_errors(fp32_path, path, x_test, name)}
        steps = lineage.get("steps")
        if steps and precision != "fp32":  # a compressed model's steps, in order: its quantization is the last
            steps = [*steps, {"step": precision, "format": fmt}]
        artifacts.append(save_artifact(
            backend, path, reporter, name=name, role=role, precision=precision, parameters=count_parameters(model),
            quantization=quantization, parity=check,
            lineage={**lineage, **({"steps": steps} if steps else {}), "conversion_seconds": round(seconds, 3),
                     "derived_from": step.derived_from(role)}))
    return artifacts


def check_finite_weights(model: "nn.Module", role: str) -> None:
    """NaN or infinite weights (a diverged training, a damaged checkpoint) fail every parity check and crash the
    INT8 quantizer's scale computation: say so once, before any file is written."""
    import torch

    bad = [name for name, value in model.state_dict().items()
           if torch.is_floating_point(value) and not bool(torch.isfinite(value).all())]
    if bad:
        raise ExportError(f"the {role}'s weights hold NaN or infinite values ({', '.join(bad[:3])}"
                          + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") + ")",
                          why="its training diverged, or the checkpoint was damaged",
                          fix="train it again with a lower lr, or export a checkpoint from a training that ended "
                              "with a finite loss")


def export_retrained(
    model: "nn.Module",
    *,
    name: str,
    role: str,
    fmt: str,
    precision: str,
    quantize_as: str,
    out_root: Path,
    in_shape: tuple[int, ...],
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    options: ExportOptions,
    reference: np.ndarray,
    reference_name: str,
    min_agreement: float,
    lineage: dict[str, Any],
    quantization: dict[str, Any] | None = None,
) -> Artifact:
    """One quantized artifact of a model retrained for quantization (QAT), under its own precision name.

    Its FP32 graph is only an intermediate (the deliverable FP32 artifact is the un-retrained model's), so it
    is written to a temporary folder; parity is against `reference`, the logits of the PyTorch model the
    artifact implements (for QAT, the fake-quant model). ONNX INT8 records carry per-layer errors as usual.
    """
    from edgekd.models import count_parameters

    backend = FORMATS[fmt]()
    path = out_root / name / f"model{backend.suffix}"
    started = time.perf_counter()
    with process_temp_dir("export") as tmp:  # one a SIGKILL left goes at the next
        fp32_path = Path(tmp) / f"fp32{backend.suffix}"
        backend.export_fp32(model, in_shape, fp32_path, options)
        settings = {**backend.quantize(fp32_path, path, quantize_as, options), **(quantization or {})}
        seconds = time.perf_counter() - started
        check = parity(backend.predict(path, x_test), reference, y_test, num_classes=num_classes,
                       threshold=min_agreement, reference_name=reference_name)
        if fmt == "onnx" and quantize_as in ("int8_static", "int8_dynamic"):
            settings["layer_errors"] = _layer_errors(fp32_path, path, x_test, name)
    return save_artifact(backend, path, name=name, role=role, precision=precision, parameters=count_parameters(model),
                         quantization=settings, parity=check,
                         lineage={**lineage, "conversion_seconds": round(seconds, 3)})


def _selection(model: "nn.Module", options: ExportOptions, x_select: np.ndarray | None,
               select_rows: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(name, inputs, PyTorch logits) of the rows the mixed-precision fallback decides on: `x_select`, else the
    calibration rows; None when there are neither (the test rows are never used to choose)."""
    from edgekd.distill.trainer import predict_logits

    if x_select is None or not len(x_select):
        x_select, select_rows = options.calibration, "calibration rows"
    if x_select is None or not len(x_select) or not options.mixed_precision_fallback:
        return None
    return select_rows, x_select, predict_logits(model, x_select)


def _mixed_precision(backend, fp32_path: Path, path: Path, precision: str, options: ExportOptions,
                     quantization: dict[str, Any] | None, selection: tuple[str, np.ndarray, np.ndarray] | None,
                     threshold: float, reporter: Reporter, name: str) -> dict[str, Any]:
    """Keep the most sensitive layers FP32 until the selection rows agree (edgekd.export.mixed_precision)."""
    from edgekd.export.mixed_precision import fallback

    if selection is None:
        reason = "no validation or calibration rows to decide on (the test rows only report)"
        return {**(quantization or {}), "mixed_precision_skipped": reason}
    rows, x_select, reference = selection
    settings = fallback(backend, fp32_path, path, precision, options, x_select=x_select, reference=reference,
                        threshold=threshold, rows=rows)
    mixed = settings.get("mixed_precision")
    if mixed:
        kept, final = settings["kept_fp32"], mixed["attempts"][-1]["agreement"]
        reporter.note(f"{name}: agreement {mixed['initial_agreement']:.2%} < {threshold:.2%} on the {rows}; kept "
                      f"{len(kept)} layer(s) in FP32 ({', '.join(kept)}) → {final:.2%} on the {rows}"
                      + ("" if mixed["passed"] else " (still failing)"))
    return {**(quantization or {}), **settings}


def _layer_errors(fp32_path: Path, path: Path, x_test: np.ndarray, name: str) -> list[dict[str, Any]] | None:
    """Per-layer SQNR/cosine of an ONNX INT8 artifact against its FP32 graph on test inputs (None if the
    graphs cannot be matched: the artifact itself is still good)."""
    from edgekd.errors import EdgeKDError
    from edgekd.export.quant_error import layer_errors

    try:
        rows = layer_errors(fp32_path, path, x_test)
    except EdgeKDError as exc:
        logger.warning("%s: no per-layer quantization error: %s", name, exc.what)
        return None
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
            for row in rows]


def floor_artifact(out_root: Path, fmt: str, in_shape: tuple[int, ...], options: ExportOptions,
                   run: str | None = None, write: Callable[[Path], Any] | None = None) -> Artifact:
    """An Identity graph of the models' input shape: benchmarking it measures the runtime's per-call floor. `run`:
    the run it is part of, recorded in its lineage like its models' (the bench history names it). `write` makes
    the file instead of the format's float floor (a text run's floor takes token ids)."""
    backend = FORMATS[fmt]()
    path = out_root / artifact_name("floor", fmt, "fp32") / f"model{backend.suffix}"
    if write is not None:
        write(path)
    else:
        backend.write_floor(path, in_shape, options)
    artifact = _record(backend, path, name=artifact_name("floor", fmt, "fp32"), role="floor", precision="fp32",
                       parameters=0, lineage={"purpose": "runtime per-call floor (Identity graph)",
                                              **({"run": run} if run else {})})
    artifact.save()
    return artifact


def _check_export_args(checkpoint: Any, output_dir: Any, lists: dict[str, Any], opset: Any,
                       agreements: dict[str, Any], calibration_samples: Any) -> None:
    """Refuse what export_checkpoint cannot honour before the checkpoint is read: Path(None) raised a bare
    TypeError, formats='onnx' was read letter by letter ('unknown export format o'), calibration_samples=-5
    silently dropped 5 rows, and min_agreement=2 failed every artifact's parity."""
    for name, value in (("checkpoint", checkpoint), ("output_dir", output_dir)):
        if not isinstance(value, (str, os.PathLike)):
            error = CheckpointError if name == "checkpoint" else OutputDirError
            raise error(f"{name} must be a path, got {type(value).__name__} {repr(value)[:60]}",
                        fix="e.g. edgekd.export('export/demo/checkpoints/student.pt', 'out/')")
    for name, value in lists.items():
        if value is not None and (isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple))):
            shown = f"[{value!r}]" if isinstance(value, str) else f"a list of {name}"
            raise ExportError(f"{name} must be a list, got {type(value).__name__} {repr(value)[:60]}",
                              why="a string would be read letter by letter" if isinstance(value, str) else None,
                              fix=f"give {name}={shown}")
        _check_names(name, value)
    if not isinstance(opset, int) or isinstance(opset, bool) or not OPSETS[0] <= opset <= OPSETS[1]:
        raise ExportError(f"opset must be an integer from {OPSETS[0]} to {OPSETS[1]}, got {opset!r}",
                          why="edgekd's exporters and runtimes are checked with those ONNX opsets",
                          fix="leave the default, 18, unless a runtime needs another")
    for name, value in agreements.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ExportError(f"{name} must be a fraction from 0 to 1, got {value!r}",
                              why="it is the top-1 agreement with PyTorch an artifact needs to pass parity",
                              fix=f"e.g. {name}=0.99")
    if not isinstance(calibration_samples, int) or isinstance(calibration_samples, bool) or calibration_samples < 1:
        raise ExportError(f"calibration_samples must be an integer ≥ 1, got {calibration_samples!r}",
                          why="static INT8 calibrates its ranges on that many training rows",
                          fix="leave the default, 256, or give a positive number")


def _check_names(name: str, value: list[Any] | tuple[Any, ...] | None) -> None:
    """formats and precisions: known names, each once, before any folder is made (an unknown precision was
    refused only once the output folder and its lock existed, None in the list was a bare TypeError, and a name
    given twice was exported twice). An empty list is refused: it exported the defaults."""
    known = {"formats": list(FORMATS.names()), "precisions": list(PRECISIONS)}.get(name)
    if value is None or known is None:
        return
    flag = f"--{name.removesuffix('s')}"
    if not value:
        raise ExportError(f"{name} is empty", why="an export makes one artifact per format × precision",
                          fix=f"give some of {', '.join(known)} ({flag} on the command line), or leave it out "
                              "for the defaults")
    for item in value:
        if item not in known:
            raise ExportError(f"unknown {name.removesuffix('s')} {item!r}", why=f"known: {', '.join(known)}",
                              fix=f"use known ones ({flag} on the command line)")
    twice = sorted({item for item in value if value.count(item) > 1})
    if twice:
        raise ExportError(f"{name} names {', '.join(twice)} more than once",
                          why="each would be exported again into the same folder", fix=f"give each {flag} once")


@kept_global_rngs()  # the model rebuilt here and the exporters draw from them
def export_checkpoint(checkpoint: str | Path, output_dir: str | Path, *, formats: list[str] | None = None,
                      precisions: list[str] | None = None, opset: int = 18, min_agreement: float = 0.99,
                      min_agreement_int4: float = 0.97, calibration_samples: int = 256,
                      devices: list[str] | None = None, reporter: Reporter | None = None) -> list[Artifact]:
    """Export an edgekd checkpoint (it records its architecture and data set) to verified artifacts.

    `devices` (profile names or paths) are the devices the artifacts are for: ONNX INT8's reduce_range "auto"
    decides for their CPUs (edgekd.compress.isa); without any, the CPU is unknown and weights are 7-bit."""
    from edgekd.compress.isa import target_cpu
    from edgekd.devices.profiles import find_profile

    _check_export_args(checkpoint, output_dir, {"formats": formats, "precisions": precisions, "devices": devices},
                       opset, {"min_agreement": min_agreement, "min_agreement_int4": min_agreement_int4},
                       calibration_samples)
    reporter = usable_reporter(reporter)
    for device in devices or ():
        find_profile(device)  # an unknown name or a bad profile is the user's mistake, said now
    targets = tuple(target_cpu(device) for device in devices or ())
    from edgekd.checkpoints import load_weights, read_checkpoint, text_run_checkpoint_error
    from edgekd.data import load_data
    from edgekd.models import model_of_checkpoint

    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint)
    text_run = text_run_checkpoint_error(checkpoint, payload, command="export")
    if text_run is not None:  # it records no spec either, but it is no bare state dict
        raise text_run
    spec, meta = payload.get("spec"), payload.get("meta") or {}
    data_cfg = meta.get("data")
    if not spec or not data_cfg:
        raise CheckpointError(
            f"{checkpoint} does not record its architecture and data set",
            why="a bare state dict cannot be rebuilt into a model on its own: edgekd export takes the checkpoints "
                "edgekd's runs write (<run>/checkpoints/*.pt)",
            fix="for a model of your own, export it with torch.onnx.export (or litert-torch) and run `edgekd bench "
                "MODEL.onnx`; or name it as teacher.checkpoint in a recipe whose teacher.model is its architecture",
        )
    model = model_of_checkpoint(spec, meta)
    role = str(meta.get("role", checkpoint.stem))
    if not re.match(PATH_COMPONENT, role):  # it names the artifact folders: "../x" would write outside them
        raise CheckpointError(f"{checkpoint} records the role {role!r}, which is no name",
                              why="the role names the artifact folders, so it cannot hold '/' or be '.' or '..'",
                              fix="export from the run that wrote the checkpoint (edgekd run RECIPE)")
    load_weights(model, checkpoint, role=role)
    splits = load_data(**data_cfg)
    rng = np.random.default_rng(0)
    calib = splits.x_train[rng.permutation(len(splits.x_train))[:calibration_samples]]
    formats = list(formats or ["onnx"])
    for fmt in formats:
        FORMATS[fmt]().check_available()
    # One export at a time writes a folder, as one run a run folder: two would write and remove each other's
    # artifact folders (a format's FP32 file is removed when FP32 was not asked for, while the other quantizes it).
    with exclusive_folder(output_dir, what=f"the output folder {output_dir}",
                          fix="wait for that export to end, or give this one another folder with --output-dir"):
        return export_model(model, role=role, formats=formats, precisions=list(precisions or PRECISIONS[:3]),
                            out_root=Path(output_dir), in_shape=splits.input_shape, x_test=splits.x_test,
                            y_test=splits.y_test, num_classes=splits.num_classes, x_select=splits.x_val,
                            options=ExportOptions(opset=opset, calibration=calib, int8_targets=targets),
                            min_agreement=min_agreement,
                            min_agreement_int4=min_agreement_int4,
                            lineage={"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
                                     **{k: v for k, v in meta.items() if k not in ("data",)}},
                            reporter=reporter)
