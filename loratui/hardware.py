"""What this machine can do for each precision, and what `precision = "auto"` resolves to.

Facts this rests on (see DESIGN.md): `torch.cuda.is_bf16_supported()` says True
for emulated bf16 on pre-Ampere GPUs, so native bf16 is decided by compute
capability >= 8.0. On CPU, bf16 and fp16 both run under `torch.autocast("cpu")`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

NATIVE, EMULATED, UNSUPPORTED = "native", "emulated", "unsupported"


@dataclass
class Capabilities:
    device: str  # "cuda" or "cpu"
    device_name: str
    compute_capability: tuple[int, int] | None
    support: dict = field(default_factory=dict)  # precision -> native | emulated | unsupported
    notes: dict = field(default_factory=dict)  # precision -> why
    nvml: str = "not checked"
    gpus: list = field(default_factory=list)  # NVML's view of each device: index, name, memory, capability
    torch_version: str = ""
    memory_bytes: int | None = None  # CUDA device 0's total memory (None on CPU: see memory_plan)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        return out


@dataclass(frozen=True)
class CudaDevice:
    """What the precision rules need to know about CUDA device 0 (tests describe made-up ones)."""

    name: str
    compute_capability: tuple[int, int]
    bf16_available: bool  # torch.cuda.is_bf16_supported(): True for emulated bf16 too
    memory_bytes: int | None = None  # total memory


def cuda_device(device: str = "auto") -> CudaDevice | None:
    """CUDA device 0 as torch sees it, or None when `device` means CPU here."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return None
    return CudaDevice(torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0)),
                      torch.cuda.is_bf16_supported(including_emulation=True),
                      torch.cuda.get_device_properties(0).total_memory)


def detect(device: str = "auto") -> Capabilities:
    """Probe torch (and NVML) for what `device` supports."""
    import torch

    cuda = cuda_device(device)
    caps = cuda_capabilities(cuda) if cuda is not None else cpu_capabilities()
    caps.torch_version = torch.__version__
    caps.nvml, caps.gpus = nvml_report()
    return caps


def cuda_capabilities(cuda: CudaDevice) -> Capabilities:
    """Native bf16 by compute capability: is_bf16_supported() alone would call emulation native."""
    major, minor = cuda.compute_capability
    caps = Capabilities("cuda", cuda.name, (major, minor), memory_bytes=cuda.memory_bytes)
    caps.support["fp32"] = NATIVE
    if major >= 8:
        caps.support["bf16"] = NATIVE
        caps.notes["bf16"] = f"compute capability {major}.{minor} >= 8.0"
    elif cuda.bf16_available:
        caps.support["bf16"] = EMULATED
        caps.notes["bf16"] = f"compute capability {major}.{minor} < 8.0: bf16 is emulated (slow)"
    else:
        caps.support["bf16"] = UNSUPPORTED
        caps.notes["bf16"] = f"compute capability {major}.{minor}: no bf16"
    caps.support["fp16"] = NATIVE if major >= 6 else EMULATED
    caps.notes["fp16"] = "fp16 autocast with dynamic loss scaling (GradScaler)"
    return caps


def cpu_capabilities() -> Capabilities:
    caps = Capabilities("cpu", _cpu_name(), None)
    caps.support["fp32"] = NATIVE
    has_bf16 = _cpu_has_bf16()
    caps.support["bf16"] = NATIVE if has_bf16 else EMULATED
    caps.notes["bf16"] = ("CPU autocast; the CPU has bf16 instructions" if has_bf16
                          else "CPU autocast; no bf16 instructions, computed via fp32")
    caps.support["fp16"] = EMULATED
    caps.notes["fp16"] = ("CPU autocast(float16) with loratui's own GradScaler "
                          "(accelerate would silently train in fp32 here)")
    return caps


def runs_on_cpu(device: str) -> bool:
    """Whether `train.device` means CPU here: accelerate must be told so (`cpu=True`), or under
    a multi-process launch on a machine without CUDA every rank quietly trains alone."""
    if device != "auto":
        return device == "cpu"
    import torch

    return not torch.cuda.is_available()


def resolve_precision(requested: str, caps: Capabilities) -> str:
    """auto: bf16 where native (CUDA >= 8.0, or CPU), else fp16 on CUDA, else fp32."""
    if requested != "auto":
        return requested
    if caps.device == "cpu":
        return "bf16"
    if caps.support.get("bf16") == NATIVE:
        return "bf16"
    return "fp16" if caps.device == "cuda" else "fp32"


def machine_problems(config, caps: Capabilities) -> list[str]:
    """Config settings this machine cannot honour (each a '<dotted key>: why' line)."""
    problems = []
    if config.train.device == "cuda" and caps.device != "cuda":
        problems.append('train.device = "cuda" but no CUDA device is available (use "auto" or "cpu")')
    precision = config.train.precision
    if precision in ("bf16", "fp16") and caps.support.get(precision) == UNSUPPORTED:
        problems.append(f'train.precision = "{precision}" is not supported here: {caps.notes.get(precision)}')
    if config.model.quantization != "none":
        from loratui.model.quantization import bitsandbytes_problem

        problem = bitsandbytes_problem()
        if problem:
            problems.append(f'model.quantization = "{config.model.quantization}": {problem}')
    from loratui.trackers import unavailable_trackers

    for name in unavailable_trackers(config.run.report_to):
        problems.append(f'run.report_to includes "{name}", which is not installed here (pip install {name})')
    return problems


def nvml_report() -> tuple[str, list[dict]]:
    """'available (N device(s), driver V)' or why not, and each device's details. Never raises:
    NVML is optional."""
    from loratui.gpu import NvmlReader, NvmlUnavailable

    reader = NvmlReader()
    try:
        reader.open()
    except NvmlUnavailable as exc:
        return f"unavailable: {exc}", []
    try:
        devices = reader.describe()
        return f"available ({len(devices)} device(s), driver {reader.driver_version()})", devices
    finally:
        reader.close()


def _cpu_has_bf16() -> bool:
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # the op is private and may be missing in some builds
        return False


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "CPU"
