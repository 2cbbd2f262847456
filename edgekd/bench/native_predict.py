"""Device accuracy where a phone has no Python: a TFLite artifact's outputs on the test inputs, computed on the
device by LiteRT's own benchmark_model, one call per sample.

benchmark_model reads an input from a file of the tensor's raw bytes (``--input_layer_value_files``, with
``--input_layer`` / ``--input_layer_shape`` naming the inputs in order; a file of another size is fatal) and,
after its last call, writes the raw bytes of every output in the model's output order (``--output_filepath``).
A loop in the device's shell cuts one sample at a time out of one pushed file (``dd``), runs the tool on it
once and appends what it wrote to one file, which is pulled and split here. Integer-quantized inputs are
quantized here and integer outputs dequantized, as edgekd's runner does, so both paths score the same numbers.

onnxruntime_perf_test writes no outputs, so an ONNX artifact on such a phone has no device accuracy.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgekd.bench.native import BENCHMARK_MODEL, remote_binary_path, run_holding_lock
from edgekd.errors import BenchError
from edgekd.rundir import sha256_file

SECONDS_PER_SAMPLE = 10.0  # the loop's time limit: generous for one tool start and one call on a phone

# Positional parameters (no value of the caller's is ever part of the script's text): 1 binary, 2 model,
# 3 threads, 4 samples, 5 bytes per sample, 6 inputs file, 7 folder, 8 the files' prefix there, 9 input name,
# 10 its shape, 11 the name as --input_layer_value_files takes it (':' doubled). The files are named as
# `edgekd devices --clean` knows them (outputs/HEX16.*); the tool's log of a failing sample goes to stderr.
_SCRIPT = r"""
mkdir -p "$7" && cd "$7" || exit 1
: > "$8.bin" || exit 1
i=0
while [ "$i" -lt "$4" ]; do
  if ! dd if="$6" of="$8.sample" bs="$5" skip="$i" count=1 2>/dev/null; then
    echo "edgekd: cannot read test sample $i from $6" >&2
    exit 1
  fi
  rm -f "$8.output"
  "$1" --graph="$2" --num_threads="$3" --warmup_runs=0 --warmup_min_secs=0 --num_runs=1 --min_secs=0 \
    --use_xnnpack=true --input_layer="$9" --input_layer_shape="${10}" --input_layer_value_files="${11}:$8.sample" \
    --output_filepath="$8.output" > "$8.log" 2>&1
  status=$?
  if [ "$status" -ne 0 ] || [ ! -s "$8.output" ]; then
    tail -n 5 "$8.log" >&2
    echo "edgekd: benchmark_model failed on test sample $i (exit $status)" >&2
    [ "$status" -ne 0 ] || status=1
    exit "$status"
  fi
  cat "$8.output" >> "$8.bin" || exit 1
  i=$((i + 1))
done
rm -f "$8.sample" "$8.output" "$8.log"
"""


def unscorable(tool: str, artifact: Any) -> str | None:
    """Why the tool cannot give this artifact's outputs on the test inputs (None when it can)."""
    if tool != BENCHMARK_MODEL:
        return f"{tool} writes no outputs"
    if len(artifact.inputs) != 1:
        return f"it has {len(artifact.inputs)} inputs and the test data one"
    if artifact.inputs[0]["shape"][0] not in (None, 1):
        return f"it takes batches of {artifact.inputs[0]['shape'][0]}, and {tool} is given one sample at a time"
    layer = artifact.inputs[0].get("tensor") or artifact.inputs[0]["name"]
    if "," in layer:
        return f"its input name {layer!r} has a ',', which {tool}'s --input_layer splits at"
    return None


def device_outputs(session: Any, artifact: Any, binary: Path, x_path: Path, threads: int, lock_wait: float,
                   local: Path) -> Path:
    """Run the artifact (pushed here if needed) on every row of `x_path` on the session's device with
    benchmark_model and save its first output, one row per sample, as float32 .npy at `local`."""
    spec = artifact.inputs[0]
    samples = _model_inputs(np.load(x_path, allow_pickle=False), spec, artifact.name)
    layout = _output_layout(artifact)
    raw = local.with_suffix(".inputs.bin")
    samples.tofile(raw)
    device = session.device
    tool = remote_binary_path(device, binary)  # pushed and made executable by the round's timing call
    model = session.push(artifact.path, f"artifacts/{artifact.sha256[:16]}{artifact.path.suffix}")
    remote_inputs = session.push(raw, f"inputs/{sha256_file(raw)[:16]}.bin")
    folder, prefix = str(PurePosixPath(device.workdir) / "outputs"), artifact.sha256[:16]
    shape = ",".join(str(d) for d in (1, *samples.shape[1:]))  # one sample per call
    layer = spec.get("tensor") or spec["name"]  # the tool warns when told another name than the tensor's
    params = [tool, model, str(threads), str(len(samples)), str(samples[0].nbytes), remote_inputs, folder, prefix,
              layer, shape, layer.replace(":", "::")]
    by_hand = [tool, f"--graph={model}", f"--input_layer={layer}", f"--input_layer_shape={shape}",
               f"--input_layer_value_files={params[-1]}:FILE", "--output_filepath=OUT"]
    run_holding_lock(device, ["sh", "-c", _SCRIPT, "sh", *params], BENCHMARK_MODEL,
                     timeout=SECONDS_PER_SAMPLE * len(samples), lock_wait=lock_wait, notice=session.say,
                     by_hand=by_hand)
    pulled = local.with_suffix(".outputs.bin")
    device.pull(f"{folder}/{prefix}.bin", pulled)
    outputs = _first_output(pulled.read_bytes(), len(samples), layout, artifact.outputs[0], artifact.name)
    np.save(local, outputs)
    return local


def _model_inputs(x: np.ndarray, spec: dict[str, Any], name: str) -> np.ndarray:
    """The test inputs as the model's input tensor holds them, one sample per row: quantized with its scale and
    zero point when it takes integers for floats (as the runner's feed), in its dtype."""
    declared = spec["shape"]
    if not len(x):
        raise BenchError(f"no test samples to score {name} with", fix="give test inputs with at least one row")
    if x.ndim != len(declared) or any(d is not None and d != s for d, s in zip(declared[1:], x.shape[1:])):
        raise BenchError(f"the test inputs have shape {list(x.shape)}; {name}'s input '{spec['name']}' takes "
                         f"{declared}", fix="give test inputs of the model's shape, one sample per row")
    dtype = np.dtype(spec["dtype"])
    quant = spec.get("quantization")
    if quant:
        limits = np.iinfo(dtype)
        x = np.clip(np.round(x / quant["scale"]) + quant["zero_point"], limits.min, limits.max)
    return np.ascontiguousarray(x, dtype=dtype)


def _output_layout(artifact: Any) -> list[dict[str, Any]]:
    """The artifact's outputs in the order the tool writes them (the model's own output order). The record keeps
    the signature's order, which a model with several outputs may not share: LiteRT on this host reads it."""
    outputs = artifact.outputs
    if len(outputs) == 1:
        return list(outputs)
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        raise BenchError(f"cannot split {artifact.name}'s {len(outputs)} outputs from the device",
                         why="the order the model writes them in is read with LiteRT on this host, which is not "
                             "installed", fix="pip install 'edgekd[tflite]'") from None
    by_tensor = {o.get("tensor"): o for o in outputs}
    order = [d["name"] for d in litert.Interpreter(model_path=str(artifact.path)).get_output_details()]
    if sorted(order, key=str) != sorted(by_tensor, key=str):
        raise BenchError(f"cannot split {artifact.name}'s outputs from the device",
                         why=f"the model's outputs {order} are not those of its record {list(by_tensor)}",
                         fix="export the artifact again")
    return [by_tensor[t] for t in order]


def _first_output(raw: bytes, samples: int, layout: list[dict[str, Any]], spec: dict[str, Any],
                  name: str) -> np.ndarray:
    """Output `spec` (the record's first: the logits the runner scores), dequantized, from the tool's raw bytes:
    per sample, every output in `layout` order."""
    if any(d is None for o in layout for d in o["shape"]):
        raise BenchError(f"cannot split the outputs of {name} that benchmark_model wrote",
                         why=f"an output's size is not fixed: {[o['shape'] for o in layout]}",
                         fix="export it with fixed output shapes, or give the device a Python for edgekd's runner")
    sizes = [int(np.prod(o["shape"])) * np.dtype(o["dtype"]).itemsize for o in layout]
    if len(raw) != samples * sum(sizes):
        raise BenchError(f"benchmark_model wrote {len(raw)} bytes of outputs of {name} for {samples} test samples",
                         why=f"{sum(sizes)} bytes per sample were expected from the shapes of its outputs",
                         fix="check the artifact's outputs in its artifact.json, or export it again")
    first = next(k for k, o in enumerate(layout) if o is spec)
    start = sum(sizes[:first])
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(samples, sum(sizes))[:, start:start + sizes[first]]
    values = np.ascontiguousarray(rows).view(np.dtype(spec["dtype"])).reshape(samples, *spec["shape"][1:])
    quant = spec.get("quantization")
    if quant:
        return ((values.astype(np.float32) - quant["zero_point"]) * quant["scale"]).astype(np.float32)
    return values.astype(np.float32)
