"""Device → host copy rates on a GPU host (a probe behind bench/RESULTS.md round seven): 512 MiB
of fp16 into a page-locked block (what the speech stage does per forward pass), into pageable
memory already touched, and ``.cpu()`` into fresh memory (page faults included).

    python bench/copy_rate_probe.py        # needs CUDA
"""
import time

import torch


def rate(copy, nbytes: int, reps: int) -> float:
    copy()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        copy()
    torch.cuda.synchronize()
    return reps * nbytes / (time.perf_counter() - t) / 1e9


def main() -> None:
    n = 2 ** 28  # fp16 values: 512 MiB
    src = torch.randn(n // 1024, 1024, device="cuda").half()
    pinned = torch.empty(n, dtype=torch.float16, pin_memory=True).view(src.shape)
    pageable = torch.zeros(n, dtype=torch.float16).view(src.shape)
    print(f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(f"D2H into a page-locked block: {rate(lambda: pinned.copy_(src), 2 * n, 5):.1f} GB/s")
    print(f"D2H into touched pageable memory: {rate(lambda: pageable.copy_(src), 2 * n, 5):.1f} GB/s")
    print(f"D2H .cpu() into fresh memory: {rate(lambda: src.cpu(), 2 * n, 2):.1f} GB/s")


if __name__ == "__main__":
    main()
