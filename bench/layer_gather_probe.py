"""Does gathering the crops' frames inside the compiled layer average pay? (#19 target 4 probe)

A training step up to 0.8.10 gathered ``feats[idx]`` — B crops × 96 frames × L × D fp16 copied out of the
resident corpus (5 GB at batch 1,024 on 25 × 1024 layers) —, zeroed the padding in place (another
pass), then the layer weights read the copy forward and again backward (the α gradient). Every
pass is memory-bound. Variants, each forward + backward of the product's ``LayerWeights``
arithmetic on the same crops of one resident corpus, CUDA-synchronised medians:

  gather+compiled  0.8.10: gather, zero padding, ``LayerWeights`` compiled as ``--compile``
  gather+eager     the same with the eager (sliced batched matmul) average
  fused            one compiled function from (corpus, idx, valid, α): the gather inside the
                   reduction (inductor indexes the corpus directly), autograd through it
  in place         the product since 0.8.11: ``LayerWeights`` compiled, given ``CropFrames`` —
                   forward and backward each one compiled function of (corpus, idx), nothing
                   crop-sized written or kept between them
  gather only      ``feats[idx].mul_(m)`` alone

Then each formulation of the in-place forward and of α's gradient, compiled alone (``fwd
reduce`` / ``fwd unrolled``, ``bwd reduce`` / ``bwd two-step`` / ``bwd two-step flat``): how
inductor's kernels differ with the way the same sums are written (0.8.11 took the unrolled forward
and the two-step gradient). Outputs and α's gradients are compared with the eager gathered product.

    python -m bench.layer_gather_probe --device cuda --frames 640000 --batch 1024
    python -m bench.layer_gather_probe --frames 4000 --batch 8 --layers 3 --dim 16   # CPU check
"""
from __future__ import annotations

import argparse
import json

import torch

from bench.ser_step_parts import timed
from models.compiled import compile_for_training
from models.layer_weights import CropFrames, LayerWeights, _average as product_average, _grad_w as product_grad_w
from models.ser_data import ResidentSet


def crops(corpus: torch.Tensor, batch: int, crop: int, seed: int = 0) -> CropFrames:
    """``batch`` crops as a training step draws them (``ResidentSet.sample``, in place) from
    ``corpus`` cut into utterances of 1–12 s (mel, phones and speakers: zeros, not read here)."""
    dev, n = corpus.device, len(corpus)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(50, 600, (n // 300,), generator=g)
    lengths = lengths[: int((lengths.cumsum(0) <= n).sum())]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(dev)
    u = len(lengths)
    data = ResidentSet([f"u{i}" for i in range(u)], corpus, torch.zeros(n, 80, device=dev),
                       torch.zeros(n, dtype=torch.int16, device=dev), offsets, torch.zeros(u, 256, device=dev),
                       torch.zeros(u, dtype=torch.long, device=dev))
    return data.sample(batch, crop, torch.Generator(device=dev).manual_seed(seed), in_place=True).feats


def _average(corpus, idx, valid, w):
    """(B, T, D) as a reduction over L: one function, autograd through it (what AOTAutograd keeps
    for backward decides), and compiled alone the forward's "reduce" formulation."""
    return ((corpus[idx].float() * w[:, None]).sum(2) * valid[..., None]).to(corpus.dtype)


def _bwd_reduce(corpus, idx, valid, g):
    """α's gradient as one reduction over (B, T, D)."""
    return (corpus[idx].float() * (g.float() * valid[..., None])[:, :, None, :]).sum((0, 1, 3))


def _bwd_two_step_flat(corpus, idx, valid, g):
    """The product's two-step gradient (``_grad_w``) on flattened frames: (B·T, L, D) rows."""
    n = idx.numel()
    x = corpus[idx.reshape(n)].float()  # (n, L, D)
    gm = (g.float() * valid[..., None]).reshape(n, 1, -1)
    return (x * gm).sum(-1).sum(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=640_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--layers", type=int, default=25)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    corpus = torch.randn(a.frames, a.layers, a.dim, device=dev, dtype=torch.float16)
    frames = crops(corpus, a.batch, a.crop)
    idx, valid = frames.idx, frames.valid
    g_out = torch.randn(a.batch, a.crop, a.dim, device=dev)
    lw = LayerWeights(a.layers).to(dev)
    with torch.no_grad():
        lw.alpha.copy_(torch.rand(a.layers) + 0.5)
    lw_c = LayerWeights(a.layers).to(dev)
    lw_c.load_state_dict(lw.state_dict())
    compile_for_training(lw_c)
    fused = torch.compile(_average, dynamic=False)
    ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def product(module, in_place=False):
        def go():
            module.alpha.grad = None
            x = frames if in_place else frames.gather()  # the product's gather: copy, zero padding
            with ac:
                out = module(x)
            out.float().backward(g_out)
            return out, module.alpha.grad
        return go

    def fused_variant(fn):
        def go():
            lw.alpha.grad = None
            out = fn(corpus, idx, valid, lw.weights())
            out.float().backward(g_out)
            return out, lw.alpha.grad
        return go

    variants = {"gather+compiled": product(lw_c), "gather+eager": product(lw),
                "fused": fused_variant(fused), "in place": product(lw_c, in_place=True),
                "gather only": frames.gather}
    ref_out, ref_grad = variants["gather+eager"]()
    ref_out, ref_grad = ref_out.detach().float(), ref_grad.clone()
    ref_grad_norm = _bwd_reduce(corpus, idx, valid, g_out)  # eager: d loss / d w (normalised weights)
    res = {"frames": a.frames, "batch": a.batch, "layers": a.layers, "dim": a.dim,
           "corpus_gb": corpus.numel() * 2 / 1e9, "device": str(dev),
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}
    for name, fn in variants.items():
        try:
            if name != "gather only":
                out, grad = fn()
                res[name + " max|Δout|"] = float((out.detach().float() - ref_out).abs().max())
                res[name + " max|Δgrad|/max|grad|"] = float((grad - ref_grad).abs().max() / ref_grad.abs().max())
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            res[name + " ms"] = timed(fn, dev, a.iters)
            if dev.type == "cuda":
                res[name + " peak GB"] = torch.cuda.max_memory_allocated(dev) / 1e9
        except Exception as e:  # noqa: BLE001 - a probe: report and go on
            res[name + " error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print({k: v for k, v in res.items() if k.startswith(name)}, flush=True)
    w = lw.weights().detach()
    # "unrolled" and "two-step" are the product's own functions (models/layer_weights.py)
    for name, fn, args in (("fwd reduce", _average, (w,)), ("fwd unrolled", product_average, (w, corpus.dtype)),
                           ("bwd reduce", _bwd_reduce, (g_out,)), ("bwd two-step", product_grad_w, (g_out,)),
                           ("bwd two-step flat", _bwd_two_step_flat, (g_out,))):
        try:
            c = torch.compile(fn, dynamic=False)
            got = c(corpus, idx, valid, *args)
            res[name + " ms"] = timed(lambda: c(corpus, idx, valid, *args), dev, a.iters)
            if name.startswith("bwd"):
                res[name + " max|Δ|/max"] = float((got - ref_grad_norm).abs().max() / ref_grad_norm.abs().max())
        except Exception as e:  # noqa: BLE001 - a probe: report and go on
            res[name + " error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print({k: v for k, v in res.items() if k.startswith(name)}, flush=True)
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
