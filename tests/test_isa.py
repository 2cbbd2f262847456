"""Hardware-aware INT8: CPU feature detection from real /proc/cpuinfo / lscpu flag lines, the format
recommendation, and the "INT8 is not faster" explanation."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgekd
from edgekd.compress.isa import (FALLBACK_SMALL_MODEL_US, cpu_flags, cpu_int8_features, explain_int8_speed,
                                 recommend_int8)

# AMD EPYC cloud VM ("model name: AMD EPYC"), the machine these tests were written on: AVX2, no AVX-512, no VNNI.
EPYC_AVX2 = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\n"
    "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
    "syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid "
    "extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt "
    "tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse "
    "3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid "
    "rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr wbnoinvd arat umip pku "
    "ospke vaes vpclmulqdq rdpid fsrm\n"
)
# Intel Xeon (Cascade Lake, family 6 model 85 stepping 7) as lscpu prints it: AVX-512 with VNNI.
XEON_VNNI = (
    "Flags:                 fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr "
    "sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid pni pclmulqdq "
    "ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm "
    "3dnowprefetch invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms "
    "invpcid rtm mpx avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw avx512vl xsaveopt xsavec "
    "xgetbv1 xsaves arat avx512_vnni arch_capabilities\n"
)
# Raspberry Pi 4 (Cortex-A72): plain NEON, no dot product.
PI4 = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
       "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n")
# Raspberry Pi 5 (Cortex-A76): dot product, no i8mm.
PI5 = ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
       "lrcpc dcpop asimddp\nCPU part\t: 0xd0b\n")
# AWS Graviton3 (Neoverse-V1): dot product, SVE and i8mm.
GRAVITON3 = ("processor       : 14\nBogoMIPS        : 2100.00\nFeatures        : fp asimd evtstrm aes pmull sha1 sha2 "
             "crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve "
             "asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng\n"
             "CPU implementer : 0x41\nCPU part        : 0xd40\n")


def test_x86_without_vnni_gets_reduce_range_and_explains_slow_int8():
    f = cpu_int8_features(EPYC_AVX2, "x86_64")
    assert f["arch"] == "x86_64" and f["avx2"] and not f["avx512"] and not f["vnni"] and not f["amx_int8"]
    assert f["known"] and not f["dotprod"]
    rec = recommend_int8(f)
    assert rec["format"] == "QDQ" and rec["weights"] == "int8" and rec["reduce_range"] is True
    assert rec["fast_int8"] is False and "VPMADDUBSW" in rec["reason"]
    why = explain_int8_speed(6.1, 5.0, f)
    assert why is not None and "not faster" in why and "no VNNI" in why and "5 µs" in why
    assert explain_int8_speed(4.0, 5.0, f) is None  # INT8 faster: nothing to explain


def test_x86_with_vnni_is_fast_s8s8_without_reduce_range():
    f = cpu_int8_features(XEON_VNNI, "x86_64")
    assert f["avx512"] and f["avx512_vnni"] and f["vnni"] and not f["avx_vnni"]
    rec = recommend_int8(f)
    assert rec["fast_int8"] and not rec["reduce_range"] and rec["activations"] == rec["weights"] == "int8"
    assert "VNNI" in rec["kernel"]
    why = explain_int8_speed(300.0, 250.0, f)  # a large model with VNNI that is still slower: no ISA blame
    assert why is not None and "no VNNI" not in why and "avx512_vnni" in why


def test_arm_dotprod_and_i8mm():
    pi4, pi5, g3 = (cpu_int8_features(t, "aarch64") for t in (PI4, PI5, GRAVITON3))
    assert all(f["arch"] == "arm64" for f in (pi4, pi5, g3))
    assert (pi4["dotprod"], pi5["dotprod"], g3["dotprod"]) == (False, True, True)
    assert (pi4["i8mm"], pi5["i8mm"], g3["i8mm"]) == (False, False, True)
    assert not recommend_int8(pi4)["fast_int8"]
    assert recommend_int8(pi5)["fast_int8"] and "SDOT" in recommend_int8(pi5)["kernel"]
    assert recommend_int8(g3)["kernel"].startswith("SMMLA") and not recommend_int8(g3)["reduce_range"]
    assert "asimddp" in explain_int8_speed(80.0, 60.0, pi4)


def test_this_host_and_unreadable_cpuinfo():
    host = cpu_int8_features()
    assert set(host) >= {"machine", "arch", "avx2", "vnni", "dotprod", "i8mm"}
    assert recommend_int8(host)["reason"]
    empty = cpu_int8_features("", "riscv64")
    assert not empty["known"] and not recommend_int8(empty)["fast_int8"]
    assert cpu_flags("flags : a b\nFeatures: c\nmodel name : x\n") == {"a", "b", "c"}


# -- reduce_range: chosen per CPU, recorded, and really reaching onnxruntime --------------------------------------

def _target(name, text, machine):
    from edgekd.compress.isa import TargetCpu

    return TargetCpu(name, cpu_int8_features(text, machine), "a test CPU")


def test_reduce_range_is_chosen_for_x86_without_vnni_only():
    from edgekd.compress.isa import choose_reduce_range

    epyc = choose_reduce_range("auto", [_target("epyc", EPYC_AVX2, "x86_64")])
    assert epyc["reduce_range"] is True and epyc["setting"] == "auto"
    assert "without AVX-VNNI" in epyc["reason"] and "saturate" in epyc["reason"]
    assert epyc["targets"] == [{"device": "epyc", "cpu": "a test CPU", "reduce_range": True,
                                "why": epyc["targets"][0]["why"]}]
    for text, machine in ((XEON_VNNI, "x86_64"), (PI4, "aarch64"), (PI5, "aarch64"), (GRAVITON3, "aarch64"),
                          ("", "aarch64")):  # Arm needs no flags: its int8 kernels never saturate
        choice = choose_reduce_range("auto", [_target("board", text, machine)])
        assert choice["reduce_range"] is False and "8-bit weights" in choice["reason"], (machine, choice)
    # an explicit setting wins, and says whether auto would have agreed for that target
    forced = choose_reduce_range(False, [_target("epyc", EPYC_AVX2, "x86_64")])
    assert forced["reduce_range"] is False and "auto would choose True" in forced["reason"]
    assert "as auto would" in choose_reduce_range(True, [_target("epyc", EPYC_AVX2, "x86_64")])["reason"]


def test_reduce_range_is_decided_for_the_target_and_is_safe_when_it_is_unknown():
    """The grid matters on the CPU that runs the artifact, not on the one exporting it: an Arm board gets 8-bit
    weights whatever this host is; an unknown CPU (or none named) gets the 7-bit grid, right on every CPU."""
    from edgekd.compress.isa import TargetCpu, choose_reduce_range

    pi = choose_reduce_range("auto", [_target("pi", PI5, "aarch64")])
    assert pi["reduce_range"] is False and "target 'pi'" in pi["reason"] and "Arm" in pi["reason"]
    unknown = choose_reduce_range("auto", [TargetCpu("phone", None, "its adb profile does not say")])
    assert unknown["reduce_range"] is True and "'phone' is unknown" in unknown["reason"]
    assert "export.int8_reduce_range: false" in unknown["reason"]  # how to get 8-bit weights when it is Arm
    unread = choose_reduce_range("auto", [_target("box", "", "x86_64")])
    assert unread["reduce_range"] is True and unread["targets"][0]["reduce_range"] is None
    none = choose_reduce_range("auto", [])
    assert none["reduce_range"] is True and "no target device" in none["reason"] and none["targets"] == []
    # several targets share one file: 7-bit when any of them needs it
    both = choose_reduce_range("auto", [_target("xeon", XEON_VNNI, "x86_64"), _target("epyc", EPYC_AVX2, "x86_64")])
    assert both["reduce_range"] is True and "target 'epyc'" in both["reason"]


def test_target_cpu_comes_from_what_the_device_profile_says():
    from edgekd.compress.isa import recipe_targets, target_cpu

    root = Path(__file__).resolve().parents[1] / "devices"
    board = target_cpu(str(root / "arm64-emulated.yaml"))  # qemu-aarch64: Arm64, known without connecting
    assert board.device == "arm64-emulated" and board.features["arch"] == "arm64"
    host = target_cpu("host")
    assert host.features == cpu_int8_features() and "this machine" in host.source
    from edgekd.devices.profiles import example_profile

    for example in ("pi", "phone"):  # the shipped examples say `cpu: {arch: arm64}`
        remote = target_cpu(str(example_profile(example)))
        assert remote.features["arch"] == "arm64" and "its profile's cpu: arm64" in remote.source, example
    recipe = edgekd.load_recipe({"bench": {"device": str(root / "arm64-emulated.yaml")}})
    assert [t.device for t in recipe_targets(recipe)] == ["arm64-emulated"]
    assert recipe_targets(edgekd.load_recipe({"bench": {"enabled": False}})) == ()


def _profile(folder: Path, **fields) -> str:
    import yaml

    path = folder / "board.yaml"
    path.write_text(yaml.safe_dump({"name": "board", **fields}))
    return str(path)


@pytest.mark.parametrize("cpu, weights", [
    ({"arch": "arm64"}, "8-bit"),                                 # a real Pi or phone: Arm never saturates
    ({"arch": "arm32", "flags": ["neon"]}, "8-bit"),
    ({"arch": "x86_64", "flags": ["avx2", "avx512f", "avx512_vnni"]}, "8-bit"),  # VNNI
    ({"arch": "x86_64", "flags": ["avx2", "fma"]}, "7-bit"),      # AVX2 without VNNI: VPMADDUBSW saturates
    (None, "7-bit"),                                              # no `cpu:`: unknown, the safe grid
])
def test_a_profile_that_says_its_cpu_gets_the_grid_of_that_cpu(tmp_path, cpu, weights):
    """A board or phone whose profile declares its CPU (`cpu:`) is decided for that CPU at export, without
    connecting; the same profile without `cpu:` stays unknown (7-bit). The record names where the CPU came from."""
    from edgekd.compress.isa import choose_reduce_range, target_cpu

    for kind, fields in (("ssh", {"host": "board.invalid"}), ("adb", {"serial": "R58M12345AB"})):
        extra = {"cpu": cpu} if cpu else {}
        target = target_cpu(_profile(tmp_path, kind=kind, **fields, **extra))
        choice = choose_reduce_range("auto", [target])
        assert choice["reduce_range"] is (weights == "7-bit"), (kind, cpu, choice)
        if cpu is None:
            assert target.features is None and "no `cpu:` field" in choice["reason"]
            assert "add `cpu:` to its profile" in choice["reason"]  # how to get 8-bit weights for it
        else:
            assert target.features["arch"] == cpu["arch"] and target.features["known"] is ("flags" in cpu)
            assert f"its profile's cpu: {cpu['arch']}" in choice["targets"][0]["cpu"]
            assert weights in choice["reason"] or "7-bit weights keep them in range" in choice["reason"]


def test_a_declared_cpu_reads_like_one_the_runner_reports():
    """A profile's `cpu:` and a bench result's CPU use the same words: the arch names cpu_int8_features gives
    for the runner's machine names, and flags from the runner's list, so the two can be compared."""
    from edgekd.bench.runner import CPU_FEATURES_OF_INTEREST
    from edgekd.compress.isa import CPU_ARCHES, PROFILE_FLAGS, declared_cpu_features

    for arch, machine in CPU_ARCHES.items():
        assert cpu_int8_features("", machine)["arch"] == arch
    assert set(PROFILE_FLAGS["x86_64"]) | set(PROFILE_FLAGS["arm64"]) == set(CPU_FEATURES_OF_INTEREST)
    assert PROFILE_FLAGS["arm64"] == PROFILE_FLAGS["arm32"]
    declared = declared_cpu_features({"arch": "x86_64", "flags": ["avx2", "avx512f", "avx512_vnni"]})
    reported = cpu_int8_features("flags\t: fpu sse2 avx2 avx512f avx512_vnni", "x86_64")
    assert declared == reported
    assert declared_cpu_features({"arch": "arm64"})["known"] is False  # no flags listed: only the arch is known


@pytest.mark.parametrize("bad", ["yes", 1, 0, None, "true"])
def test_reduce_range_setting_must_be_auto_true_or_false(bad):
    from edgekd.compress.isa import choose_reduce_range
    from edgekd.errors import ExportError

    with pytest.raises(ExportError, match="int8_reduce_range"):
        choose_reduce_range(bad)


def test_the_call_overhead_is_blamed_from_the_measured_floor_when_there_is_one():
    """A fixed 50 µs bound called a 40 µs model overhead-bound beside a 3.5 µs floor (9% of its time), and could
    not see a slow runtime's floor: the measured floor decides; 50 µs is only the guess without one."""
    f = cpu_int8_features(XEON_VNNI, "x86_64")
    small = explain_int8_speed(7.0, 6.0, f, floor_p50=3.5)
    assert "the runtime's per-call floor (3.5 µs, measured) is 58% of this 6.0 µs model's time" in small
    assert "per-call" not in explain_int8_speed(48.0, 40.0, f, floor_p50=3.5)
    slow_runtime = explain_int8_speed(130.0, 120.0, f, floor_p50=70.0)
    assert "per-call floor (70.0 µs, measured) is 58%" in slow_runtime
    guessed = explain_int8_speed(48.0, 40.0, f)
    assert "a 40 µs model likely spends much of its time in per-call overhead (no floor was measured" in guessed
    assert "per-call" not in explain_int8_speed(60.0, FALLBACK_SMALL_MODEL_US, f)


def test_unknown_device_flags_are_not_blamed():
    why = explain_int8_speed(80.0, 60.0, cpu_int8_features("", "x86_64"))
    assert "unknown" in why and "no VNNI" not in why


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory, one_thread):
    """A briefly trained digits MLP (two Gemm layers) exported to FP32 ONNX, with calibration inputs."""
    import numpy as np

    from edgekd.data import load_data
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import fit
    from edgekd.export.onnx import export_onnx
    from edgekd.models import create_model

    s = load_data("digits")
    model = create_model("mlp", in_shape=(64,), num_classes=10, width=64)
    fit(model, s.x_train, s.y_train, loss_fn=LOSSES["ce"], steps=300, batch_size=64, lr=1e-2, weight_decay=1e-4,
        seed=0)
    fp32 = export_onnx(model, s.input_shape, tmp_path_factory.mktemp("isa") / "fp32.onnx", opset=18)
    return s, fp32, s.x_train[np.random.default_rng(0).permutation(len(s.x_train))[:256]]


def _int8_weights(path):
    import onnx
    from onnx import numpy_helper

    return [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]


@pytest.mark.parametrize("precision", ["int8_static", "int8_dynamic"])
def test_backend_quantizes_on_the_chosen_grid_and_records_why(digits_mlp, tmp_path, precision):
    from edgekd.compress.isa import choose_reduce_range
    from edgekd.export.formats import FORMATS, ExportOptions

    s, fp32, calibration = digits_mlp
    backend = FORMATS["onnx"]()
    for setting in (True, False, "auto"):
        out = tmp_path / f"{precision}-{setting}.onnx"
        record = backend.quantize(fp32, out, precision, ExportOptions(calibration=calibration,
                                                                      int8_reduce_range=setting))
        expected = choose_reduce_range(setting)["reduce_range"]
        assert record["reduce_range"] is expected and record["reduce_range_setting"] == setting
        assert record["reduce_range_reason"] == choose_reduce_range(setting)["reason"]
        weights = _int8_weights(out)
        assert len(weights) == 2  # both Gemm weights stored as int8
        largest = max(int(abs(w.astype(int)).max()) for w in weights)
        assert largest <= 64 if expected else largest > 64, (setting, largest)  # 7-bit grid [-64, 64] or 8-bit


def test_the_export_stage_decides_for_the_recipes_bench_device():
    """The export stage (its options and its input hash) decides for bench.device, not for the exporting host:
    the emulated Arm64 board gets 8-bit weights, a recipe without a bench (no known target) the 7-bit grid."""
    from edgekd.compress.isa import _auto_reduce_range
    from edgekd.pipeline import Context
    from edgekd.progress import SilentReporter
    from edgekd.stages import export_options, int8_reduce_range

    def context(bench):
        return Context(edgekd.load_recipe({"bench": bench}), rundir=None, reporter=SilentReporter())

    arm = context({"device": str(Path(__file__).resolve().parents[1] / "devices" / "arm64-emulated.yaml")})
    assert int8_reduce_range(arm) is False
    assert [t.device for t in export_options(arm).int8_targets] == ["arm64-emulated"]
    assert int8_reduce_range(context({"enabled": False})) is True
    host_needs = _auto_reduce_range(cpu_int8_features())[0]
    assert int8_reduce_range(context({"device": "host"})) is (True if host_needs is None else host_needs)


def test_backend_stores_the_grid_of_the_target_device_not_of_this_host(digits_mlp, tmp_path):
    """Exporting on any host for the emulated Arm64 board gives 8-bit weights (Arm does not saturate), and the
    record says which target the grid was chosen for."""
    from edgekd.compress.isa import target_cpu
    from edgekd.export.formats import FORMATS, ExportOptions

    s, fp32, calibration = digits_mlp
    board = target_cpu(str(Path(__file__).resolve().parents[1] / "devices" / "arm64-emulated.yaml"))
    record = FORMATS["onnx"]().quantize(fp32, tmp_path / "arm.onnx", "int8_static",
                                        ExportOptions(calibration=calibration, int8_targets=(board,)))
    assert record["reduce_range"] is False and "target 'arm64-emulated'" in record["reduce_range_reason"]
    assert [t["device"] for t in record["reduce_range_targets"]] == ["arm64-emulated"]
    assert max(int(abs(w.astype(int)).max()) for w in _int8_weights(tmp_path / "arm.onnx")) > 64  # 8-bit grid


def test_reduce_range_removes_the_kernel_saturation_on_this_host(digits_mlp, tmp_path):
    """On x86 without VNNI onnxruntime's int8 kernels lose SQNR that the QDQ math as written does not; with 7-bit
    weights the deployed and written SQNR agree. On other CPUs neither grid saturates."""
    from edgekd.export.onnx import quantize_static_int8
    from edgekd.export.quant_error import layer_errors

    s, fp32, calibration = digits_mlp
    gaps = {}
    for reduce_range in (False, True):
        out = tmp_path / f"rr-{reduce_range}.onnx"
        assert quantize_static_int8(fp32, out, calibration, reduce_range=reduce_range)["reduce_range"] is reduce_range
        rows = layer_errors(fp32, out, s.x_test)
        gaps[reduce_range] = max(r["sqnr_db_simulated"] - r["sqnr_db"] for r in rows)
    assert gaps[True] < 1.0, gaps  # 7-bit weights never saturate
    host = cpu_int8_features()
    if host["arch"] == "x86_64" and host["avx2"] and not (host["vnni"] or host["amx_int8"]):
        assert gaps[False] > 6.0, gaps  # 8-bit weights do here: what auto avoids
    else:
        assert gaps[False] < 1.0, gaps


def test_dynamic_int8_really_keeps_excluded_gemms_in_fp32(digits_mlp, tmp_path):
    """The mixed-precision fallback's exclusions reach onnxruntime's dynamic quantizer, which renames each Gemm
    to '<name>_MatMul' before applying them (found through this file's reduce_range work: kept layers ran INT8)."""
    import numpy as np
    import onnx

    from edgekd.export.onnx import quantize_dynamic_int8
    from edgekd.export.verify import onnx_predict

    s, fp32, _ = digits_mlp
    for kept, integer_matmuls in (((), 2), (("node_linear",), 1), (("node_linear", "node_linear_1"), 0)):
        out = tmp_path / f"dynamic-{len(kept)}.onnx"
        record = quantize_dynamic_int8(fp32, out, nodes_to_exclude=kept)
        assert record.get("kept_fp32", []) == list(kept)
        ops = [n.op_type for n in onnx.load(str(out)).graph.node]
        assert ops.count("MatMulInteger") == integer_matmuls, (kept, ops)
    np.testing.assert_allclose(onnx_predict(out, s.x_test), onnx_predict(fp32, s.x_test), atol=1e-5)


def test_edgekd_export_decides_the_grid_for_the_device_it_is_told(tiny_run, tmp_path):
    """`edgekd export --device` names the device the artifacts are for (without it the CPU is unknown: 7-bit); a
    device that is not known is the user's mistake, said before anything is exported."""
    import json
    import os
    import subprocess
    import sys

    board = str(Path(__file__).resolve().parents[1] / "devices" / "arm64-emulated.yaml")
    checkpoint = str(tiny_run.rundir.checkpoints / "student.pt")

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edgekd.cli", "export", checkpoint, "--precision",
                               "int8_dynamic", "--output-dir", str(tmp_path / "out"), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})

    made = export("--device", board)
    assert made.returncode == 0, made.stderr
    record = json.loads((tmp_path / "out" / "student-onnx-int8_dynamic" / "artifact.json").read_text())
    assert record["quantization"]["reduce_range"] is False  # Arm64: 8-bit weights, whatever this host is
    assert [t["device"] for t in record["quantization"]["reduce_range_targets"]] == ["arm64-emulated"]
    unknown = export("--device", "no-such-board")
    assert unknown.returncode == 2 and "unknown device 'no-such-board'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
