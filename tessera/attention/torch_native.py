"""Reference attention in plain PyTorch (any device): a loop over requests, SDPA per request."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.attention.base import AttentionBackend
from tessera.forward.batch import ForwardBatch


class TorchNativeAttentionBackend(AttentionBackend):
    name = "torch_native"

    def forward(self, q, k, v, out, layer_id, scaling, forward_batch: ForwardBatch,
                rope=None) -> None:
        assert rope is None, "torch_native does not fuse the rotary embedding"
        n = self.real_tokens(forward_batch)
        self.kv_pool.set_kv(layer_id, forward_batch.out_cache_loc[:n], k[:n], v[:n])
        k_cache = self.kv_pool.k_buffers[layer_id]
        v_cache = self.kv_pool.v_buffers[layer_id]
        table = self.req_to_token_pool.req_to_token
        group = self.num_heads // self.num_kv_heads
        start = 0
        rows = forward_batch.req_pool_indices.tolist()
        for row, prefix, extend in zip(rows, forward_batch.extend_prefix_lens_cpu,
                                       forward_batch.extend_seq_lens_cpu):
            seq_len = prefix + extend
            slots = table[row, :seq_len].to(torch.int64)
            keys = k_cache[slots].transpose(0, 1)    # [Hk, S, D]
            values = v_cache[slots].transpose(0, 1)
            if group > 1:
                keys = keys.repeat_interleave(group, dim=0)
                values = values.repeat_interleave(group, dim=0)
            query = q[start:start + extend].transpose(0, 1)  # [Hq, E, D]
            # new token i sits at position prefix + i and sees keys 0..prefix + i
            qpos = torch.arange(prefix, seq_len, device=q.device).unsqueeze(1)
            kpos = torch.arange(seq_len, device=q.device).unsqueeze(0)
            mask = kpos <= qpos
            o = F.scaled_dot_product_attention(query.float(), keys.float(), values.float(),
                                               attn_mask=mask, scale=scaling)
            out[start:start + extend] = o.transpose(0, 1).to(out.dtype)
            start += extend
        if out.shape[0] > n:
            out[n:].zero_()
