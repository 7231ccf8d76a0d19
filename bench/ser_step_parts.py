"""Where one SER training step's time goes, part by part (diagnosis for #19 target 4).

Each part of the product's ``SERModel`` (models/ser.py, ``small`` on 25 × 1024 features) runs
forward + backward alone on RANDOM inputs of its real shapes (B crops of 96 frames, under the
bf16 autocast ``SERTask.loss`` uses), CUDA-synchronised, median of repeated timings; then the
whole model forward + loss + backward, and Adam's step. Printed as ms per step and as a share
of the whole, so the levers of the paper's schedule can be weighed before any is built:

  conv stacks   the product's ``ConvStack`` (channels-last 2-D convolutions on CUDA since 0.8.3;
                eager, and compiled as ``--compile`` does) against its 1-D blocks
  layer weights the product's batched ``matmul`` against einsum, bmm and compiled
  LSTMs         each one's time at B and at 2B (does a larger batch still buy throughput?)
  two streams   the speech encoder and the phone encoder are independent: both on one stream
                against the phone encoder on a second CUDA stream
The trainer's whole step replayed from a CUDA graph (models/train_step.py) is timed against the
compiled step by ``bench/ser_speed.py --compile default,default+graph`` (its own rows, same run).
Variants are skipped with ``--no-variants``; ``--json`` keeps the numbers.

    python -m bench.ser_step_parts --device cuda            # one GPU
    python -m bench.ser_step_parts --batch 8 --iters 2      # CPU check of the code path
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.ser_speed import _sync
from models.ser import ConvStack, SERModel, make_config, run_lstm, ser_loss
from models.trainer import TrainConfig, make_optimizer
from bench.extract_speech import machine


def timed(fn, device: torch.device, iters: int, warm: int = 3) -> float:
    """Median ms of ``fn()`` over ``iters`` calls after ``warm``."""
    for _ in range(warm):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fwd_bwd(module_fn, *inputs):
    """A closure: forward ``module_fn(*inputs)`` under the autocast, backward a random gradient."""
    def go():
        with autocast(inputs[0].device):
            out = module_fn(*inputs)
        out.backward(torch.ones_like(out))
    return go


def autocast(device: torch.device):
    """The step's bf16 autocast."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def layer_weight_variants(model: SERModel, b: int, device, cfg) -> dict:
    """The learnable layer average, forward + backward (to alpha), in a few formulations."""
    x = torch.randn(b, cfg.crop, cfg.n_layers, cfg.feat_dim, device=device, dtype=torch.float16)
    lw = model.layers

    def einsum(x):
        return torch.einsum("l,btld->btd", lw.weights().to(x.dtype), x)

    def flat_mm(x):  # x viewed as (B·T, L, D): B·T products (1, L) @ (L, D) in one bmm
        return torch.bmm(lw.weights().to(x.dtype).expand(b * cfg.crop, 1, -1), x.flatten(0, 1)).view(b, cfg.crop, -1)
    out = {"product (matmul)": fwd_bwd(lw, x), "einsum": fwd_bwd(einsum, x), "bmm": fwd_bwd(flat_mm, x)}
    if device.type == "cuda":
        out["product compiled"] = fwd_bwd(torch.compile(lw.run, dynamic=False), x)
    return out


def leaf(shape, device, transpose=False):
    """A random input that wants a gradient; ``transpose``: (B, C, T) as a view of (B, T, C),
    as the model hands its conv stacks."""
    if transpose:
        return torch.randn(shape[0], shape[2], shape[1], device=device).requires_grad_().transpose(1, 2)
    return torch.randn(*shape, device=device, requires_grad=True)


def part_fns(model: SERModel, b: int, device, cfg) -> dict:
    t = cfg.crop
    enc, ph, dec = model.encoder, model.phone_encoder, model.decoder
    feats = torch.randn(b, t, cfg.n_layers, cfg.feat_dim, device=device, dtype=torch.float16)
    spk = torch.randn(b, cfg.dim_spk, device=device)
    return {
        "layer weights": fwd_bwd(model.layers, feats),
        "encoder convs": fwd_bwd(lambda x: enc.convs(x, spk), leaf((b, cfg.feat_dim, t), device, True)),
        "encoder LSTM (2 x bi 8)": fwd_bwd(lambda x: run_lstm(enc.lstm, x), leaf((b, t, cfg.dim_conv), device)),
        "phone convs": fwd_bwd(ph.convs, leaf((b, cfg.n_phones, t), device, True)),
        "phone LSTM (2 x bi 128)": fwd_bwd(lambda x: run_lstm(ph.lstm, x), leaf((b, t, cfg.dim_conv), device)),
        "decoder LSTM1 (512)": fwd_bwd(lambda x: run_lstm(dec.lstm1, x), leaf((b, t, dec.lstm1.input_size), device)),
        "decoder convs": fwd_bwd(dec.convs, leaf((b, cfg.dim_pre, t), device, True)),
        "decoder LSTM2 (2 x 1024) + proj": fwd_bwd(lambda x: dec.proj(run_lstm(dec.lstm2, x)),
                                                   leaf((b, t, cfg.dim_pre), device)),
        "postnet": fwd_bwd(model.postnet, leaf((b, t, cfg.n_mels), device)),
    }


def whole_step(model: SERModel, b: int, device, cfg, two_streams: bool = False):
    t = cfg.crop
    feats = torch.randn(b, t, cfg.n_layers, cfg.feat_dim, device=device, dtype=torch.float16)
    spk = torch.randn(b, cfg.dim_spk, device=device)
    phones = F.one_hot(torch.randint(0, cfg.n_phones, (b, t), device=device), cfg.n_phones).half()
    mel, labels = torch.rand(b, t, cfg.n_mels, device=device), torch.randint(0, cfg.n_classes, (b,), device=device)
    side = torch.cuda.Stream(device) if two_streams else None

    def go():
        with autocast(device):
            if side is None:
                out = model(feats, spk, phones)
            else:
                out = forward_two_streams(model, side, feats, spk, phones)
        ser_loss(out, mel, labels)["loss"].backward()
    return go


def forward_two_streams(model: SERModel, side, feats, spk, phones) -> dict:
    """``SERModel.forward`` with the phone encoder on ``side`` while the speech encoder runs."""
    main = torch.cuda.current_stream(feats.device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        ph = model.phone_encoder(phones.to(torch.bfloat16))
    codes = model.encode(feats, spk)
    main.wait_stream(side)
    ph.record_stream(main)
    logits = model.classifier(codes)
    b, t = feats.shape[:2]
    up = codes.repeat_interleave(model.cfg.freq, dim=1)
    dec_in = torch.cat([up, spk.to(up.dtype)[:, None, :].expand(b, t, -1), ph.to(up.dtype)], -1)
    mel_r1 = model.decoder(dec_in)
    return {"codes": codes, "logits": logits, "mel_r1": mel_r1, "mel_r2": mel_r1 + model.postnet(mel_r1)}


def conv_variants(model: SERModel, b: int, device, cfg, iters: int) -> dict:
    """Two conv stacks: the product's (channels-last on CUDA) against their 1-D blocks (the path
    before 0.8.3, and the product's on the CPU), eager and compiled; ms and the outputs' gap."""
    out = {}
    for name, stack, c_in in [("encoder convs", model.encoder.convs, cfg.feat_dim + cfg.dim_spk),
                              ("decoder convs", model.decoder.convs, cfg.dim_pre)]:
        x = leaf((b, c_in, cfg.crop), device, True)
        rows = {"product eager": fwd_bwd(stack, x), "1-D blocks eager": fwd_bwd(partial(one_d_run, stack), x)}
        if device.type == "cuda":
            rows["product compiled"] = fwd_bwd(torch.compile(stack.run, dynamic=False), x)
            rows["1-D blocks compiled"] = fwd_bwd(torch.compile(partial(one_d_run, stack), dynamic=False), x)
        with torch.no_grad(), autocast(device):
            gap = (stack(x).float() - one_d_run(stack, x).float()).abs().max().item()
        out[name] = {k: timed(fn, device, iters) for k, fn in rows.items()} | {"largest_gap": gap}
    return out


def one_d_run(stack: ConvStack, h: torch.Tensor) -> torch.Tensor:
    """The stack's blocks as the 1-D convolutions and batch norms they are declared as."""
    for i, block in enumerate(stack):
        h = block(h)
        if stack.last_act or i < len(stack) - 1:
            h = stack.act(h)
    return h


def variants(model: SERModel, b: int, device, cfg, args) -> dict:
    """The alternatives weighed for each part (see the module's docstring)."""
    lstms = {n: fn for n, fn in part_fns(model, 2 * b, device, cfg).items() if "LSTM" in n}
    out = {"lstms_at_double_batch_per_b_crops": {n: timed(fn, device, args.iters) / 2 for n, fn in lstms.items()},
           "conv_stacks": conv_variants(model, b, device, cfg, args.iters),
           "layer_weights": {k: timed(fn, device, args.iters)
                             for k, fn in layer_weight_variants(model, b, device, cfg).items()}}
    if device.type == "cuda":
        out["phone_encoder_on_a_second_stream_ms"] = timed(whole_step(model, b, device, cfg, two_streams=True),
                                                           device, args.iters)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--no-variants", action="store_true", help="only the product's parts")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    cfg, b = make_config("small"), args.batch
    model = SERModel(cfg).to(device).train()
    out = {"machine": machine(args.device), "torch": torch.__version__, "batch": b, "inputs": "RANDOM",
           "whole_ms": timed(whole_step(model, b, device, cfg), device, args.iters),
           "adam_ms": timed(make_optimizer(model, TrainConfig(lr=1e-4)).step, device, args.iters),
           "parts_ms": {name: timed(fn, device, args.iters) for name, fn in part_fns(model, b, device, cfg).items()}}
    if not args.no_variants:
        out["variants"] = variants(model, b, device, cfg, args)
    print(json.dumps(out, indent=1))
    print(f"whole forward + loss + backward {out['whole_ms']:.2f} ms = {b / out['whole_ms'] * 1e3:,.0f} crops/s; "
          + "; ".join(f"{k} {v / out['whole_ms']:.1%}" for k, v in out["parts_ms"].items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
