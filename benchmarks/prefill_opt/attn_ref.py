"""Our extend attention kernel against torch's fused attention kernels (GPU): how much faster
could prefill attention be at the benchmark shapes?

One request of N new tokens, no cached prefix, bf16, causal. Device time per call inside a
replayed CUDA graph of 20 calls (no host time), median of 7 replays:
  * tessera: `ExtendAttention` as the piecewise forward calls it (fused K/V store, auto tile);
  * sdpa_<backend>: `F.scaled_dot_product_attention(is_causal=True)` restricted to one backend
    (flash, cudnn, efficient) on [1, H, N, D] views, K/V heads repeated for GQA (so its K/V
    traffic is the larger one; the store into the cache is not included);
  * varlen: `torch.nn.attention.varlen.varlen_attn` (packed tokens, cu_seqlens), when present.
A backend that refuses the shape is listed under "failed".

    python benchmarks/prefill_opt/attn_ref.py --out attn_ref.json
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from extend_blocks import time_us


def sdpa_call(sdpa_kernel, backend, q4, k4, v4) -> torch.Tensor:
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q4, k4, v4, is_causal=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tessera.attention.triton_ops.extend_attention import ExtendAttention

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    dev = torch.device("cuda")
    rows = []
    for model, hq, hk, d in (("qwen3-0.6b", 16, 8, 128), ("llama3-8b", 32, 8, 128)):
        for n in (16, 256, 1024):
            qkv = torch.randn(n, (hq + 2 * hk) * d, dtype=torch.bfloat16, device=dev)
            q = qkv[:, :hq * d].view(n, hq, d)
            k = qkv[:, hq * d:(hq + hk) * d].view(n, hk, d)
            v = qkv[:, (hq + hk) * d:].view(n, hk, d)
            k_cache = torch.zeros(n + 1, hk, d, dtype=torch.bfloat16, device=dev)
            v_cache = torch.zeros_like(k_cache)
            table = torch.arange(1, n + 1, dtype=torch.int32, device=dev).view(1, n)
            out = torch.empty(n, hq, d, dtype=torch.bfloat16, device=dev)
            meta = [torch.tensor(x, dtype=dt, device=dev) for x, dt in
                    (([0], torch.int64), ([0], torch.int32), ([n], torch.int32),
                     ([0], torch.int32))]
            loc = torch.arange(1, n + 1, dtype=torch.int64, device=dev)
            row = {"model": model, "tokens": n, "us": {}, "failed": {}}
            ours = ExtendAttention(q, k_cache, v_cache, out, table, d ** -0.5, k_new=k, v_new=v)
            ours(*meta, n, loc)
            row["us"]["tessera"] = time_us(functools.partial(ours, *meta, n, loc))
            expected = out.clone()

            # [1, H, N, D] views; GQA by repeating K/V heads (contiguous, as backends want)
            q4 = q.transpose(0, 1).unsqueeze(0).contiguous()
            k4 = k.repeat_interleave(hq // hk, dim=1).transpose(0, 1).unsqueeze(0).contiguous()
            v4 = v.repeat_interleave(hq // hk, dim=1).transpose(0, 1).unsqueeze(0).contiguous()
            for name, backend in (("flash", SDPBackend.FLASH_ATTENTION),
                                  ("cudnn", SDPBackend.CUDNN_ATTENTION),
                                  ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
                sdpa = functools.partial(sdpa_call, sdpa_kernel, backend, q4, k4, v4)
                try:
                    got = sdpa()[0].transpose(0, 1)
                    row.setdefault("max_abs_diff", {})[name] = round(
                        (got.float() - expected.float()).abs().max().item(), 4)
                    row["us"][f"sdpa_{name}"] = time_us(sdpa)
                except Exception as e:  # noqa: BLE001  (backend refuses the shape)
                    row["failed"][f"sdpa_{name}"] = repr(e)[:160]
            if varlen_attn is not None:
                cu = torch.tensor([0, n], dtype=torch.int32, device=dev)
                qc, kc, vc = q.contiguous(), k.contiguous(), v.contiguous()

                params = inspect.signature(varlen_attn).parameters
                causal = ({"window_size": (-1, 0)} if "window_size" in params
                          else {"is_causal": True})
                if "enable_gqa" in params:
                    causal["enable_gqa"] = True
                else:  # older API: K/V heads repeated as for sdpa
                    kc = kc.repeat_interleave(hq // hk, dim=1)
                    vc = vc.repeat_interleave(hq // hk, dim=1)
                varlen = functools.partial(varlen_attn, qc, kc, vc, cu, cu, n, n, **causal)
                try:
                    got = varlen()
                    row.setdefault("max_abs_diff", {})["varlen"] = round(
                        (got.float() - expected.float()).abs().max().item(), 4)
                    row["us"]["varlen"] = time_us(varlen)
                except Exception as e:  # noqa: BLE001
                    row["failed"]["varlen"] = repr(e)[:160]
            print(model, n, json.dumps(row["us"]), json.dumps(row.get("max_abs_diff")),
                  json.dumps(row["failed"]), flush=True)
            rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
