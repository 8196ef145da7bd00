"""Hardware files, peak arithmetic, GPU name matching and CPU detection from real cpuinfo text."""

from __future__ import annotations

import json
import shutil

import pytest
from omegaconf import OmegaConf

from pipeline.analyze.cpu import parse_cpuinfo, simd_profile
from pipeline.analyze.hardware import cpu_spec_from_cpuinfo
from pipeline.analyze.hardware import (
    HARDWARE_DIR,
    hardware_names,
    load_hardware,
    load_hardware_config,
    match_gpu_name,
    peak_ops_per_s,
    resolve_hardware,
    spec_for_gpus,
)
from pipeline.core.config import CONF_DIR, PRECISIONS, HardwareConfig, PrecisionConfig, UnitSpec
from pipeline.core.errors import PipelineError

GPU_FILES = ["a10", "a100_sxm", "h100_pcie", "h100_sxm", "h200", "jetson_orin", "l4", "t4"]


def precision(name: str) -> PrecisionConfig:
    merged = OmegaConf.merge(OmegaConf.structured(PrecisionConfig), OmegaConf.load(CONF_DIR / "precision" / f"{name}.yaml"))
    return OmegaConf.to_object(merged)


def tera(spec, key, sparse=False):
    return spec.peaks[key].ops_per_s(sparse) / 1e12


# --- config files ---------------------------------------------------------------------------------

def test_every_hardware_file_is_present_and_starts_with_a_comment():
    assert set(GPU_FILES + ["auto", "cpu"]) <= set(hardware_names())
    for name in hardware_names():
        assert (HARDWARE_DIR / f"{name}.yaml").read_text().startswith("# "), name


@pytest.mark.parametrize("name", GPU_FILES)
def test_gpu_files_load_against_the_schema_and_cite_sources(name):
    cfg = load_hardware_config(name)
    assert isinstance(cfg, HardwareConfig) and cfg.kind == "gpu" and cfg.name == name
    assert cfg.vendor_names and cfg.sm_count > 0 and cfg.memory_bandwidth_gbs > 0 and cfg.sources
    for key, unit in cfg.units.items():
        assert isinstance(unit, UnitSpec)
        assert unit.source, f"{name}.{key} has no source"
        assert key.startswith(unit.precision + "_") and key.endswith("_" + unit.core), key
        assert unit.clock_mhz <= cfg.clock_mhz_max, key


@pytest.mark.parametrize("name", PRECISIONS)
def test_precision_files_load_against_the_schema(name):
    text = (CONF_DIR / "precision" / f"{name}.yaml").read_text()
    assert text.startswith("# ")
    p = precision(name)
    assert p.name == name and p.weight_bytes > 0 and p.activation_bytes > 0
    expected_peak = {"fp32": "fp32_cuda", "best": "best"}.get(name, f"{name}_tensor")
    assert p.peak == expected_peak
    assert p.weight_bytes == {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2}.get(name, 1)


def test_unknown_hardware_name_lists_the_files():
    with pytest.raises(PipelineError) as err:
        load_hardware("h900")
    assert "h100_sxm" in err.value.hint and "a100_sxm" in err.value.hint


# --- peaks ----------------------------------------------------------------------------------------

def test_peak_formula_matches_seed_a100_examples():
    unit = UnitSpec("fp16", "tensor", 4, 256, 1410)
    assert peak_ops_per_s(unit, 108) == pytest.approx(1410e6 * 108 * 4 * 256 * 2)
    a100 = load_hardware("a100_sxm")
    assert round(tera(a100, "fp64_cuda"), 1) == 9.7
    assert round(tera(a100, "fp32_cuda"), 1) == 19.5
    assert round(tera(a100, "fp64_tensor"), 1) == 19.5
    assert round(tera(a100, "tf32_tensor")) == 156
    assert round(tera(a100, "fp16_tensor")) == 312
    assert round(tera(a100, "bf16_tensor")) == 312
    assert round(tera(a100, "int8_tensor")) == 624
    assert round(tera(a100, "fp16_tensor", sparse=True)) == 624
    assert round(tera(a100, "fp16_cuda")) == 78  # seed: 256 FP16 FMA/clk/SM on CUDA cores
    assert a100.memory_bandwidth_bytes_s == 2039e9
    assert round(a100.ridge_point("fp16_tensor")) == 153 and round(a100.ridge_point("int8_tensor")) == 306


def test_h100_sxm_uses_the_tensor_clock():
    h100 = load_hardware("h100_sxm")
    assert round(tera(h100, "fp16_tensor"), 1) == 989.4  # 1830 MHz, not 1980
    assert round(tera(h100, "fp16_tensor", sparse=True)) == 1979
    assert round(tera(h100, "tf32_tensor"), 1) == 494.7
    assert round(tera(h100, "int8_tensor")) == round(tera(h100, "fp8_tensor")) == 1979
    assert round(tera(h100, "fp32_cuda"), 1) == 66.9 and round(tera(h100, "fp64_cuda"), 1) == 33.5
    assert round(h100.ridge_point("fp16_tensor")) == 295 and round(h100.ridge_point("int8_tensor")) == 591
    formula = h100.peaks["fp16_tensor"].formula
    assert formula.startswith("1830 MHz x 132 SM x 4 units x 512 FMA/clk x 2 = 989.4 TFLOPS dense")


@pytest.mark.parametrize(
    "name, key, tflops, digits",
    [
        ("h100_pcie", "fp16_tensor", 756, 0), ("h100_pcie", "fp32_cuda", 51.2, 1),
        ("h200", "fp16_tensor", 989.4, 1), ("l4", "fp16_tensor", 121, 0), ("l4", "fp8_tensor", 242, 0),
        ("l4", "fp32_cuda", 30.3, 1), ("t4", "fp16_tensor", 65, 0), ("t4", "int8_tensor", 130, 0),
        ("t4", "fp32_cuda", 8.1, 1), ("t4", "fp64_cuda", 0.25, 2), ("a10", "fp16_tensor", 125, 0),
        ("a10", "int8_tensor", 250, 0), ("a10", "fp32_cuda", 31.2, 1), ("a10", "tf32_tensor", 62.5, 1),
        ("jetson_orin", "int8_tensor", 85, 0), ("jetson_orin", "fp32_cuda", 5.3, 1),
    ],
)
def test_datasheet_peaks(name, key, tflops, digits):
    assert round(tera(load_hardware(name), key), digits) == tflops


def test_h200_differs_from_h100_only_in_memory():
    h200, h100 = load_hardware("h200"), load_hardware("h100_sxm")
    assert {k: p.ops_per_s_dense for k, p in h200.peaks.items()} == {k: p.ops_per_s_dense for k, p in h100.peaks.items()}
    assert h200.memory_bandwidth_bytes_s == 4.8e12 and round(h200.ridge_point("fp16_tensor")) == 206


@pytest.mark.parametrize("hw, prec", [("a100_sxm", "fp8"), ("t4", "bf16"), ("t4", "tf32"), ("jetson_orin", "fp8")])
def test_peak_for_missing_precision_says_what_exists(hw, prec):
    with pytest.raises(PipelineError) as err:
        load_hardware(hw).peak_for(precision(prec))
    assert f"no {prec} peak" in err.value.message
    assert "int8" in err.value.message and "fp16" in err.value.message
    assert "precision=" in err.value.hint


def test_peak_for_and_best():
    a100, h100 = load_hardware("a100_sxm"), load_hardware("h100_sxm")
    assert a100.peak_for(precision("fp32")).key == "fp32_cuda"
    assert a100.peak_for(precision("int8")).key == "int8_tensor"
    assert a100.peak_for(precision("best")).key == "int8_tensor"
    assert h100.peak_for(precision("best")).key == "int8_tensor"  # ties with fp8: int8 preferred
    assert h100.peak_for(precision("fp8")).key == "fp8_tensor"


def test_vector_peaks_for_non_mac_layers():
    a100, orin = load_hardware("a100_sxm"), load_hardware("jetson_orin")
    assert a100.vector_peak_for(a100.peaks["fp16_tensor"]).key == "fp16_cuda"
    assert a100.vector_peak_for(a100.peaks["int8_tensor"]).key == "fp16_cuda"
    assert a100.vector_peak_for(a100.peaks["tf32_tensor"]).key == "fp32_cuda"
    fallback = orin.vector_peak_for(orin.peaks["fp16_tensor"])
    assert fallback.key == "fp32_cuda" and "fp32_cuda" in fallback.note


def test_hardware_to_dict_is_json():
    data = json.loads(json.dumps(load_hardware("h100_sxm").to_dict(), allow_nan=False))
    assert data["peaks"]["fp16_tensor"]["ops_per_s_sparse"] == pytest.approx(2 * 989.43e12, rel=1e-4)
    assert data["peaks"]["fp32_cuda"]["ops_per_s_sparse"] is None
    assert data["detection"]["method"] == "config" and data["memory_bandwidth_gbs"] == 3350


# --- GPU detection ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu_configs():
    return {n: load_hardware_config(n) for n in GPU_FILES}


@pytest.mark.parametrize(
    "reported, expected",
    [
        ("NVIDIA H100 80GB HBM3", "h100_sxm"), ("NVIDIA H100 PCIe", "h100_pcie"), ("NVIDIA H200", "h200"),
        ("NVIDIA H200 NVL", None), ("NVIDIA A100-SXM4-80GB", "a100_sxm"), ("NVIDIA A100-SXM4-40GB", None),
        ("NVIDIA A10", "a10"), ("NVIDIA A10G", None), ("NVIDIA L4", "l4"), ("NVIDIA L40S", None),
        ("Tesla T4", "t4"), ("Orin (nvgpu)", "jetson_orin"), ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_match_gpu_name(reported, expected, gpu_configs):
    match = match_gpu_name(reported, gpu_configs)
    assert (match[0] if match else None) == expected


# NVML's facts of the lent H200 and of a T4 (name, compute capability, driver and clock as recorded in
# benchmarks/results; H200 memory 143771 MiB in bytes), keys as pipeline.core.gpu.device_facts returns them.
H200_FACTS = {"name": "NVIDIA H200", "compute_capability": "9.0", "driver": "580.159.04",
              "max_sm_clock_mhz": 1980, "max_mem_clock_mhz": None, "power_limit_w": None,
              "memory_total_bytes": 150754820096}
T4_FACTS = {"name": "Tesla T4", "compute_capability": "7.5", "driver": "580.159.04", "max_sm_clock_mhz": 1590,
            "max_mem_clock_mhz": None, "power_limit_w": None, "memory_total_bytes": None}


def test_spec_for_gpus_matches_the_nvml_name_to_a_file(gpu_configs, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = spec_for_gpus([H200_FACTS], configs=gpu_configs)
    assert spec.name == "h200" and spec.kind == "gpu"
    assert spec.detection == {"method": "nvml", "reported_name": "NVIDIA H200", "gpu_index": 0,
                              "gpus": ["NVIDIA H200"], "file": "conf/hardware/h200.yaml", "vendor_name": "H200",
                              "compute_capability": "9.0", "driver": "580.159.04", "max_sm_clock_mhz": 1980,
                              "memory_total_bytes": 150754820096}
    # the first GPU of CUDA_VISIBLE_DEVICES is the one analysed; a differing clock is noted, not used
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    slow = dict(H200_FACTS, max_sm_clock_mhz=1755)
    spec = spec_for_gpus([T4_FACTS, slow], configs=gpu_configs)
    assert spec.name == "h200" and spec.detection["gpu_index"] == 1
    assert "NVML max SM clock 1755 MHz differs from the file's 1980 MHz" in spec.detection["note"]
    assert tera(spec, "fp16_tensor") == tera(load_hardware("h200"), "fp16_tensor")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    spec = spec_for_gpus([T4_FACTS, slow], configs=gpu_configs)
    assert spec.name == "t4" and "memory_total_bytes" not in spec.detection and "note" not in spec.detection


def test_spec_for_gpus_falls_back_to_this_cpu(gpu_configs, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = spec_for_gpus([], "NVML could not start (NVMLError_LibraryNotFound: NVML Shared Library Not Found)",
                         configs=gpu_configs)
    assert spec.kind == "cpu"
    assert spec.detection["note"] == ("no NVIDIA GPU found (NVML could not start (NVMLError_LibraryNotFound: NVML"
                                      " Shared Library Not Found)); analysed against this CPU")
    unknown = dict(H200_FACTS, name="NVIDIA GeForce RTX 4090", compute_capability="8.9")
    spec = spec_for_gpus([unknown], configs=gpu_configs)
    assert spec.kind == "cpu" and spec.detection["gpu"]["name"] == "NVIDIA GeForce RTX 4090"
    assert "has no conf/hardware file" in spec.detection["note"]


def test_resolve_gpu_config_as_given_and_bad_kind():
    spec = resolve_hardware(load_hardware_config("t4"))
    assert spec.kind == "gpu" and spec.detection["method"] == "config"
    with pytest.raises(PipelineError, match="kind 'tpu'"):
        resolve_hardware(HardwareConfig(name="x", kind="tpu"))


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_auto_without_gpu_falls_back_to_this_cpu():
    spec = load_hardware("auto")
    assert spec.kind == "cpu" and "no NVIDIA GPU" in spec.detection["note"]
    assert spec.peaks["fp32_simd"].ops_per_s_dense > 0


# --- CPU detection ----------------------------------------------------------------------------------

def x86_cpuinfo(model_name, flags, cores, threads_per_core=2, vendor="GenuineIntel", family=6, model=63,
                mhz=1200.0):
    """/proc/cpuinfo as Linux prints it for one socket."""
    blocks = []
    for cpu in range(cores * threads_per_core):
        blocks.append(
            f"processor\t: {cpu}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
            f"model name\t: {model_name}\nstepping\t: 2\ncpu MHz\t\t: {mhz:.3f}\ncache size\t: 20480 KB\n"
            f"physical id\t: 0\nsiblings\t: {cores * threads_per_core}\ncore id\t\t: {cpu % cores}\n"
            f"cpu cores\t: {cores}\nflags\t\t: {flags}\nbogomips\t: 5999.98\n"
        )
    return "\n".join(blocks) + "\n"


HASWELL_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
                 "ss ht syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe "
                 "popcnt aes xsave avx f16c rdrand lahf_lm abm bmi1 avx2 bmi2 erms")
HASWELL = x86_cpuinfo("Intel(R) Core(TM) i7-5960X CPU @ 3.00GHz", HASWELL_FLAGS, cores=8)


def test_seed_haswell_8_cores_3ghz():
    info = parse_cpuinfo(HASWELL)
    assert (info.logical_cpus, info.physical_cores, info.clock_mhz) == (16, 8, 3000.0)
    spec = cpu_spec_from_cpuinfo(HASWELL)
    assert spec.peaks["fp32_simd"].ops_per_s_dense == 768e9  # 3.0e9 x 8 x 2 FMA x 8 lanes x 2
    assert spec.peaks["fp64_simd"].ops_per_s_dense == 384e9  # 4 FP64 lanes
    assert spec.peaks["fp32_simd"].formula == "3000 MHz x 8 cores x 2 FMA units x 8 lanes x 2 = 768 GFLOPS"
    assert "2 FMA-256" in spec.detection["assumption"] and "no int8 peak" in spec.detection["assumption"]
    assert "int8_simd" not in spec.peaks
    fallback = spec.peak_for(precision("int8"))
    assert fallback.key == "fp32_simd" and "no int8 peak" in fallback.note
    assert spec.peak_for(precision("fp32")).key == "fp32_simd"
    assert "ESTIMATED" in spec.to_dict()["notes"] and spec.memory_bandwidth_bytes_s == 51.2e9


def test_cpufreq_max_and_usable_cpus_win():
    assert cpu_spec_from_cpuinfo(HASWELL, max_freq_khz="3500000\n").peaks["fp32_simd"].ops_per_s_dense == 896e9
    capped = cpu_spec_from_cpuinfo(HASWELL, usable=2)
    assert capped.sm_count == 2 and capped.peaks["fp32_simd"].ops_per_s_dense == 192e9


def test_avx512_vnni_server_assumes_two_fma_units():
    flags = HASWELL_FLAGS + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"
    text = x86_cpuinfo("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", flags, cores=20, model=85)
    spec = cpu_spec_from_cpuinfo(text)
    assert spec.peaks["fp32_simd"].ops_per_s_dense == 2.5e9 * 20 * 2 * 16 * 2 == 3.2e12
    assert spec.peaks["int8_simd"].ops_per_s_dense == 2.5e9 * 20 * 2 * 64 * 2 == 12.8e12
    assert "1 FMA-512" in spec.detection["assumption"]  # says which parts have half
    assert spec.peak_for(precision("int8")).key == "int8_simd"


def test_zen4_avx512_is_double_pumped():
    flags = HASWELL_FLAGS + " avx512f avx512_vnni"
    text = x86_cpuinfo("AMD EPYC 9654 96-Core Processor", flags, cores=4, vendor="AuthenticAMD", family=25,
                       model=17, mhz=2400.0)
    prof = simd_profile(parse_cpuinfo(text))
    assert (prof.isa, prof.fma_units, prof.fp32_lanes, prof.int8_macs_per_unit) == ("avx512_zen4", 2, 8, 32)
    assert parse_cpuinfo(text).clock_source.startswith("cpu MHz")


NEOVERSE_N1 = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
    f"asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
    f"CPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n"
    for i in range(4)
)


def test_aarch64_neon_with_dot_product():
    info = parse_cpuinfo(NEOVERSE_N1, max_freq_khz="2500000")
    assert (info.arch, info.logical_cpus, info.physical_cores) == ("aarch64", 4, None)
    spec = cpu_spec_from_cpuinfo(NEOVERSE_N1, max_freq_khz="2500000")
    assert spec.peaks["fp32_simd"].ops_per_s_dense == 2.5e9 * 4 * 2 * 4 * 2 == 160e9
    assert spec.peaks["int8_simd"].ops_per_s_dense == 2.5e9 * 4 * 2 * 16 * 2 == 640e9
    assert spec.detection["cores_source"].startswith("logical CPUs")
    with pytest.raises(PipelineError, match="clock"):
        cpu_spec_from_cpuinfo(NEOVERSE_N1)  # no MHz anywhere: the user must pass it


def test_cpu_overrides_and_this_machine():
    overrides = HardwareConfig(name="cpu", kind="cpu", sm_count=4, memory_bandwidth_gbs=100.0)
    spec = cpu_spec_from_cpuinfo(HASWELL, overrides=overrides)
    assert spec.sm_count == 4 and spec.memory_bandwidth_bytes_s == 100e9
    assert spec.peaks["fp32_simd"].ops_per_s_dense == 3e9 * 4 * 32
    here = load_hardware("cpu")
    assert here.kind == "cpu" and here.peaks["fp32_simd"].ops_per_s_dense > 0
    assert here.detection["assumption"] and "estimated" in here.detection["memory_bandwidth"]
    json.dumps(here.to_dict(), allow_nan=False)
