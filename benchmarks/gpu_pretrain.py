"""Pretraining throughput on a GPU: samples/s and model FLOP utilisation (MFU) of the multimodal MAE in bf16.

Synthetic batches at the paper's sizes (RNA 16,304 genes, DNAm 25,978 probes, 256 px tiles, every modality present,
or a TCGA-like mix with --mixed), the real training step (autocast bf16, AdamW foreach, 50% masking). FLOPs per
step are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward + backward (matmuls, convolutions,
attention); MFU = counted FLOPs x steps/s / the device's peak dense bf16 FLOP/s (--peak-tflops; H100/H200 SXM:
989).

    python benchmarks/gpu_pretrain.py --size big --batch 256 --steps 20                 # on the GPU machine
    python benchmarks/gpu_pretrain.py --device cpu --size tiny --batch 4 --steps 2 --tile 64   # smoke test
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def make_batch(cfg, batch: int, device: torch.device, mixed: bool) -> dict[str, torch.Tensor]:
    from imputmae.model import MODALITIES

    g = torch.Generator().manual_seed(0)
    out = {"rna": torch.rand(batch, cfg.input_len("rna"), generator=g),
           "dnam": torch.rand(batch, cfg.input_len("dnam"), generator=g),
           "wsi": torch.rand(batch, 3, cfg.tile_size, cfg.tile_size, generator=g)}
    avail = torch.ones(batch, 3, dtype=torch.bool)
    if mixed:   # roughly Table 2: DNAm 95%, WSI 90% of RNA patients
        avail[:, 1] = torch.rand(batch, generator=g) < 0.95
        avail[:, 2] = torch.rand(batch, generator=g) < 0.90
    out["available"] = avail
    for j, m in enumerate(MODALITIES):
        shape = (-1,) + (1,) * (out[m].dim() - 1)
        out[m] = out[m] * avail[:, j].view(shape)
    return {k: v.to(device) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", default="big", choices=["tiny", "small", "big"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--rna-len", type=int, default=16304)
    ap.add_argument("--dnam-len", type=int, default=25978)
    ap.add_argument("--mixed", action="store_true", help="TCGA-like missing DNAm/WSI (key-padding path)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="device peak dense bf16 TFLOP/s")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    from imputmae.config import model_dims
    from imputmae.model import MAEConfig, MultimodalMAE

    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = MAEConfig.from_dict(dict(rna_len=args.rna_len, dnam_len=args.dnam_len, tile_size=args.tile,
                    **model_dims({"size": args.size})))
    model = MultimodalMAE(cfg).to(device).train()
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-2, foreach=True)
    batch = make_batch(cfg, args.batch, device, args.mixed)
    amp = device.type == "cuda"

    def step() -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss, *_ = step_model(batch, predict="masked")   # the training step, as train_one_epoch runs it
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss, *_ = model(batch, predict="masked")        # the FLOPs that step performs
        loss.backward()
    flops = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    achieved = flops / dt
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "size": args.size,
           "batch": args.batch, "mixed": args.mixed, "compile": args.compile,
           "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "step_ms": round(dt * 1e3, 2), "samples_per_s": round(args.batch / dt, 1),
           "gflop_per_step": round(flops / 1e9, 2), "achieved_tflops": round(achieved / 1e12, 3),
           "mfu": round(achieved / (args.peak_tflops * 1e12), 4) if device.type == "cuda" else None,
           "peak_mem_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
           "final_loss": round(loss.item(), 5)}
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
