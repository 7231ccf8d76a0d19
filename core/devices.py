"""Which device a command runs on: "auto" resolved to a visible GPU or the CPU, and checks that
name the fix instead of failing deep inside torch."""
from __future__ import annotations


def visible_gpus() -> list[int]:
    """Indices of the GPUs this process may use ([] on a CPU machine)."""
    try:
        import torch
    except ImportError:
        return []
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def resolve_device(device: str | None) -> str:
    """"auto"/None → "cuda" when this process sees a GPU, else "cpu"; "cpu", "cuda", "cuda:N" are
    checked (StageError naming the fix) rather than failing deep inside torch."""
    from core.errors import StageError
    if device in (None, "", "auto"):
        return "cuda" if visible_gpus() else "cpu"
    if device == "cpu":
        return device
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise StageError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    visible = visible_gpus()
    if not visible:
        raise StageError(f"--device {device}: no CUDA GPU is visible to torch here; use "
                         "--device cpu (or auto)")
    if index and int(index) not in visible:
        raise StageError(f"--device {device}: no such GPU; visible: {', '.join(map(str, visible))}")
    return device
