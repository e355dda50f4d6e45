"""Reference MLA attention in plain PyTorch (any device): a loop over requests over the latent
cache, in float32.

The model calls `tessera::attention` in the absorbed form (tessera.models.deepseek_v2): every
head's query already lives in the latent space, q [T, H, L + R] (L = kv_lora_rank latent dims,
then R = rope dims); each token has one shared key k [T, 1, L + R] (the normed latent, then the
rotated rope key), and the value is the latent itself, v = k[..., :L]. So attention is MQA with
one K/V "head" whose value is a prefix of its key: out[t, h] = softmax_s(scaling * q[t, h] .
latent[s]) @ latent[s, :L]. The pool stores that latent once per token and layer
(MLAKVPool.latent_buffers).
"""
from __future__ import annotations

import torch

from tessera.attention.base import AttentionBackend, AttentionSupport
from tessera.cache.spec import MLASpec
from tessera.forward.batch import ForwardBatch


class TorchNativeMLABackend(AttentionBackend):
    name = "torch_native"
    support = AttentionSupport(kv_spec=MLASpec)

    def forward(self, q, k, v, out, layer_id, scaling, forward_batch: ForwardBatch,
                rope=None) -> None:
        """q [T, H, L + R], k [T, 1, L + R], v [T, 1, L] (k's first L dims); writes
        out [T, H, L]."""
        assert rope is None, "torch_native does not fuse the rotary embedding"
        latent_dim = k.shape[-1]
        lora_rank = v.shape[-1]
        assert q.shape[-1] == latent_dim == self.head_dim and k.shape[1] == 1, (
            q.shape, k.shape, self.head_dim)
        n = self.real_tokens(forward_batch)
        self.kv_pool.set_latent(layer_id, forward_batch.out_cache_loc[:n], k[:n, 0])
        cache = self.kv_pool.latent_buffers[layer_id]
        table = self.req_to_token_pool.req_to_token
        start = 0
        rows = forward_batch.req_pool_indices.tolist()
        for row, prefix, extend in zip(rows, forward_batch.extend_prefix_lens_cpu,
                                       forward_batch.extend_seq_lens_cpu):
            seq_len = prefix + extend
            latent = cache[table[row, :seq_len].to(torch.int64)].float()  # [S, L + R]
            query = q[start:start + extend].float().transpose(0, 1)  # [H, E, L + R]
            scores = torch.matmul(query, latent.t()) * scaling  # [H, E, S]
            # new token i sits at position prefix + i and sees the tokens 0..prefix + i
            qpos = torch.arange(prefix, seq_len, device=q.device).unsqueeze(1)
            kpos = torch.arange(seq_len, device=q.device).unsqueeze(0)
            scores = scores.masked_fill(kpos > qpos, float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            o = torch.matmul(probs, latent[:, :lora_rank])  # [H, E, L]
            out[start:start + extend] = o.transpose(0, 1).to(out.dtype)
            start += extend
        if out.shape[0] > n:
            out[n:].zero_()
