"""Training steps per second: our WSI branch vs transformers' ViTMAEForPreTraining at the same dimensions.

Same batch, same masking noise, same optimizer (AdamW, foreach), forward + backward + step, on CPU; the two models
alternate step by step so that load from other processes hits both alike. Prints the median step time of each
and the ratio (goal >= 1.5x).

    PYTHONPATH=src python benchmarks/bench_train_step.py --size small --batch 8 --steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build(size: str, tile: int):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from imputmae.config import model_dims
    from imputmae.model import MAEConfig, MultimodalMAE

    d = model_dims({"size": size})
    ours = MultimodalMAE(MAEConfig(modalities=("wsi",), tile_size=tile, wsi_patch_size=16, mask_ratio=0.5,
                                   **{k: v for k, v in d.items() if k not in ("rna_layers", "dnam_layers")}))
    hf_cfg = ViTMAEConfig(hidden_size=d["hidden_size"], num_hidden_layers=d["wsi_layers"],
                          num_attention_heads=d["num_heads"], intermediate_size=d["intermediate_size"],
                          decoder_hidden_size=d["decoder_hidden_size"], decoder_num_hidden_layers=d["decoder_layers"],
                          decoder_num_attention_heads=d["decoder_heads"],
                          decoder_intermediate_size=d["decoder_intermediate_size"], image_size=tile, patch_size=16,
                          mask_ratio=0.5, attn_implementation="sdpa")
    hf = ViTMAEForPreTraining(hf_cfg)
    return ours, hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=["tiny", "small", "big"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="print where our step spends its time")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, hf = build(args.size, args.tile)
    ours.train()
    hf.train()
    n = (args.tile // 16) ** 2
    x = torch.rand(args.batch, 3, args.tile, args.tile)
    noise = torch.rand(args.batch, n)
    batch = {"wsi": x, "available": torch.ones(args.batch, 3, dtype=torch.bool)}
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, betas=(0.9, 0.95), foreach=True)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), foreach=True)

    def step_ours() -> float:
        loss, *_ = ours(batch, noise={"wsi": noise}, predict="masked")
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()
        return loss.item()

    def step_hf() -> float:
        pixel_values = (x - ours.pixel_mean) / ours.pixel_std      # ours normalises inside its step too
        loss = hf(pixel_values=pixel_values, noise=noise).loss
        opt_hf.zero_grad(set_to_none=True)
        loss.backward()
        opt_hf.step()
        return loss.item()

    for _ in range(args.warmup):
        step_ours()
        step_hf()
    t_ours, t_hf = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step_ours()
        t1 = time.perf_counter()
        step_hf()
        t2 = time.perf_counter()
        t_ours.append(t1 - t0)
        t_hf.append(t2 - t1)
    mo, mh = statistics.median(t_ours), statistics.median(t_hf)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"WSI branch, size {args.size} ({n_params / 1e6:.1f} M parameters), batch {args.batch}, "
          f"{args.tile}px tiles, mask 0.5, {args.threads} thread(s), median of {args.steps} steps")
    print(f"  ours:         {mo * 1e3:8.1f} ms/step  {1 / mo:6.2f} steps/s")
    print(f"  transformers: {mh * 1e3:8.1f} ms/step  {1 / mh:6.2f} steps/s")
    print(f"  ratio (ours / transformers steps/s): {mh / mo:.2f}x")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, fn in (("ours", step_ours), ("transformers", step_hf)):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            print(f"--- {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
