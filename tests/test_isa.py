"""Hardware-aware INT8: CPU feature detection from real /proc/cpuinfo / lscpu flag lines, the format
recommendation, and the "INT8 is not faster" explanation."""

from __future__ import annotations

from edgekd.compress.isa import cpu_flags, cpu_int8_features, explain_int8_speed, recommend_int8

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
