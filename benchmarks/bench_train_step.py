"""Training steps per second: our WSI branch vs transformers' ViTMAEForPreTraining at the same dimensions.

Same batch, same masking noise, same optimizer (AdamW, foreach), forward + backward + step, on CPU; the models
alternate step by step so that load from other processes hits all alike. Ours runs its training step
(``predict="masked"``: the loss's patches only, the same loss and gradients). Prints the median step time of each
and the ratio (goal >= 1.5x), eager against eager.

Large tensors: glibc hands allocations above its (adaptive) mmap threshold back to the kernel when freed, so
a step that allocates them again page-faults, and how often depends on what the other model did to the heap
just before (transformers' step measured 172-186 ms after ours with fixed thresholds, 193-227 ms without:
tiny, batch 32, 2026-11-29). The benchmark therefore fixes glibc's thresholds (``mallopt``: mmap above 32 MiB, no trimming
below 1 GiB), the same for every model; ``--default-malloc`` leaves them adaptive.

``--compile`` adds ``torch.compile`` of both models (ours compiled against transformers eager and compiled);
``--bf16`` runs every model under the same ``torch.autocast("cpu", torch.bfloat16)``.

    PYTHONPATH=src python benchmarks/bench_train_step.py --size small --batch 8 --steps 10 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import statistics
import time

import torch


def build(size: str, tile: int):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from imputmae.config import model_dims
    from imputmae.model import MAEConfig, MultimodalMAE

    d = model_dims({"size": size})
    ours = MultimodalMAE(MAEConfig.from_dict(dict(modalities=("wsi",), tile_size=tile, wsi_patch_size=16, mask_ratio=0.5,
                                   **{k: v for k, v in d.items() if k not in ("rna_layers", "dnam_layers")})))
    hf_cfg = ViTMAEConfig(hidden_size=d["hidden_size"], num_hidden_layers=d["wsi_layers"],
                          num_attention_heads=d["num_heads"], intermediate_size=d["intermediate_size"],
                          decoder_hidden_size=d["decoder_hidden_size"], decoder_num_hidden_layers=d["decoder_layers"],
                          decoder_num_attention_heads=d["decoder_heads"],
                          decoder_intermediate_size=d["decoder_intermediate_size"], image_size=tile, patch_size=16,
                          mask_ratio=0.5, attn_implementation="sdpa")
    hf = ViTMAEForPreTraining(hf_cfg)
    return ours, hf


def steady_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module docstring); False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=["tiny", "small", "big"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="print where our step spends its time")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of both models")
    ap.add_argument("--bf16", action="store_true", help="every model under the same bfloat16 autocast")
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's adaptive thresholds alone")
    args = ap.parse_args()
    fixed = False if args.default_malloc else steady_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, hf = build(args.size, args.tile)
    ours.train()
    hf.train()
    n = (args.tile // 16) ** 2
    x = torch.rand(args.batch, 3, args.tile, args.tile)
    noise = torch.rand(args.batch, n)
    batch = {"wsi": x, "available": torch.ones(args.batch, 3, dtype=torch.bool)}
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    def stepper(model, ours_api: bool):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), foreach=True)

        def step() -> float:
            with autocast():
                if ours_api:
                    loss, *_ = model(batch, noise={"wsi": noise}, predict="masked")
                else:
                    pixel_values = (x - ours.pixel_mean) / ours.pixel_std      # ours normalises inside its step too
                    loss = model(pixel_values=pixel_values, noise=noise).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()
        return step

    steps = {"ours": stepper(ours, True), "transformers": stepper(hf, False)}
    compile_s = {}
    if args.compile:   # separate copies, so that each variant trains its own weights from the same start
        import copy

        for name, model, ours_api in (("ours", ours, True), ("transformers", hf, False)):
            step = stepper(torch.compile(copy.deepcopy(model)), ours_api)
            t0 = time.perf_counter()
            step()                                                     # compiles forward and backward
            compile_s[name] = time.perf_counter() - t0
            steps[f"{name} compiled"] = step
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"WSI branch, size {args.size} ({n_params / 1e6:.1f} M parameters), batch {args.batch}, "
          f"{args.tile}px tiles, mask 0.5, {args.threads} thread(s), {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"{'fixed' if fixed else 'default'} malloc thresholds, median of {args.steps} steps")
    for name, m in med.items():
        extra = f"  (compile + first step {compile_s[name.split()[0]]:.0f} s)" if name.endswith("compiled") else ""
        print(f"  {name + ':':24s}{m * 1e3:8.1f} ms/step  {1 / m:6.2f} steps/s{extra}")
    print(f"  ratio, eager vs eager (ours / transformers steps/s): {med['transformers'] / med['ours']:.2f}x")
    if args.compile:
        print(f"  ratio, ours compiled vs transformers eager: {med['transformers'] / med['ours compiled']:.2f}x")
        print(f"  ratio, ours compiled vs transformers compiled: "
              f"{med['transformers compiled'] / med['ours compiled']:.2f}x")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, fn in (("ours", steps["ours"]), ("transformers", steps["transformers"])):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            print(f"--- {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
