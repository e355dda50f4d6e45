"""Llama family (Llama 2/3/3.1, Mistral) as pure math over tessera.layers.

Qwen2 is this code with q/k/v bias (config.attention_bias); Qwen3 adds per-head q/k RMSNorm
(`qk_norm=True`). Tensor parallelism, quantization and the few-row fusions are properties of the
layers; graphs are the runner's.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from tessera.cache.spec import MHASpec
from tessera.config.model import ModelConfig
from tessera.layers.attention import Attention
from tessera.layers.communicator import LayerCommunicator, layer_communicators
from tessera.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from tessera.layers.layernorm import RMSNorm
from tessera.layers.linear import QKVParallelLinear, RowParallelLinear
from tessera.layers.mlp import GatedMLP
from tessera.layers.qk_norm_rope import QKNormRotary
from tessera.layers.rotary import get_rope
from tessera.models.base import CausalLM


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype,
                 qk_norm: bool = False) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(config.hidden_size, config.head_dim,
                                          config.num_attention_heads, config.num_key_value_heads,
                                          bias=config.attention_bias, dtype=dtype)
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        # the unsharded input dim: RowParallelLinear takes this rank's 1/tp of it
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim,
                                        config.hidden_size, dtype=dtype)
        self.rotary_emb = get_rope(self.head_dim, config.max_position_embeddings,
                                   config.rope_theta, config.rope_scaling)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        # q/k norm + rotary as one op; it reads the weights of q_norm/k_norm (owns none)
        self.qk_norm_rope = (QKNormRotary(self.q_norm, self.k_norm, self.rotary_emb)
                             if qk_norm else None)
        self.attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim,
                              self.head_dim ** -0.5, layer_id)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.attend(positions, self.qkv_proj(hidden))

    def forward_norm(self, positions: torch.Tensor, hidden: torch.Tensor,
                     residual: torch.Tensor | None,
                     norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(norm(hidden + residual)), hidden + residual): the norm feeds qkv_proj through
        its forward_norm (at a bs=1 decode row on CUDA one GEMV kernel, the norm its input
        stage; elsewhere norm then linear)."""
        qkv, residual = self.qkv_proj.forward_norm(hidden, residual, norm)
        return self.attend(positions, qkv), residual

    def attend(self, positions: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        """Everything after the q/k/v projection: rotary (+ q/k norm), attention, o_proj."""
        t = qkv.shape[0]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # [T, H, D] views of the fused projection: no copies (kernels take the strides)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.qk_norm_rope is not None:
            q, k = self.qk_norm_rope(positions, q, k)
            return self.o_proj(self.attn(q, k, v))
        # decode on the triton backend: the rotary runs inside the attention kernel
        return self.o_proj(self.attn.forward_rope(positions, q, k, v, self.rotary_emb))


class LlamaDecoderLayer(nn.Module):
    """`self_attn`, then `mlp`: any attention block with LlamaAttention's `forward_norm` and
    `forward(positions, hidden)` contract and a row-parallel `o_proj` (LlamaAttention by
    default; DeepSeek's MLA), and any MLP block with GatedMLP's (the dense GatedMLP by default;
    a FusedMoE in the MoE models). `comm` says whether the residual stream arrives, and the MLP
    runs, on this rank's slice of the tokens (tessera.layers.communicator; the full stream
    always, outside `--moe-dense-tp-size 1`); a given `mlp` was built inside
    `comm.mlp_weights()`."""

    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype,
                 qk_norm: bool = False, mlp: nn.Module | None = None,
                 self_attn: nn.Module | None = None,
                 comm: LayerCommunicator | None = None) -> None:
        super().__init__()
        self.comm = comm or LayerCommunicator(layer_id, False, False, False)
        self.self_attn = (self_attn if self_attn is not None
                          else LlamaAttention(config, layer_id, dtype, qk_norm))
        self.comm.configure_attention_output(self.self_attn.o_proj)
        with self.comm.mlp_weights():
            self.mlp = (mlp if mlp is not None
                        else GatedMLP(config.hidden_size, config.intermediate_size, dtype))
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.feed_forward(*self.attention(positions, hidden, residual))

    # Each norm feeds the projection after it through the block's forward_norm: at a bs=1
    # decode row on CUDA that is one GEMV kernel (the norm is its input stage), elsewhere norm
    # then linear.
    def attention(self, positions: torch.Tensor, hidden: torch.Tensor,
                  residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first half: (o_proj output, residual stream before it), in the MLP's layout."""
        out, residual = self.comm.attention(self.self_attn, positions, hidden, residual,
                                            self.input_layernorm)
        return self.comm.mlp_input(out, residual, positions.shape[0])

    def feed_forward(self, hidden: torch.Tensor,
                     residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The second half: (MLP output, residual stream before it); residual None when hidden
        is the stream itself (LlamaModel.finish)."""
        return self.mlp.forward_norm(hidden, residual, self.post_attention_layernorm)


class LlamaModel(nn.Module):
    """The backbone: token ids + positions -> final hidden states.

    `forward` gives every token's final hidden state. Only a request's last token feeds the LM
    head, and after the last layer's attention no token depends on another, so the next-token
    path splits there: `trunk` (every token, up to the last attention; what the piecewise runner
    compiles and captures) and `finish` (the last layer's MLP and the final norm on the chosen
    rows only). On a one-request prefill of llama3-8b that skips 1/32 of the MLP work."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, qk_norm: bool = False,
                 make_mlp: Callable[[int], nn.Module] | None = None,
                 make_attention: Callable[[int], nn.Module] | None = None,
                 dense_layers: Sequence[bool] | None = None) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, dtype)
        comms = layer_communicators(dense_layers or [False] * config.num_hidden_layers)
        layers = []
        for i, comm in enumerate(comms):
            with comm.mlp_weights():
                mlp = make_mlp(i) if make_mlp else None
            layers.append(LlamaDecoderLayer(config, i, dtype, qk_norm, mlp,
                                            make_attention(i) if make_attention else None,
                                            comm))
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def trunk(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The residual stream [T, hidden] right after the last layer's attention (its o_proj
        output added): every token through every attention."""
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers[:-1]:
            hidden, residual = layer(positions, hidden, residual)
        last = self.layers[-1]
        hidden, residual = last.attention(positions, hidden, residual)
        # the stream as the fused add + norm before the MLP writes it (its normed rows are
        # finish's to compute; one kernel that keeps the launch chain of tessera.ops.triton.pdl
        # where a plain add would break it)
        _, stream = last.post_attention_layernorm(hidden, residual)
        return stream

    def finish(self, stream: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states of `stream` (trunk's output) at `rows` ([R] indices; every row
        when None): equal to forward's at those rows."""
        if rows is not None:
            stream = stream.index_select(0, rows)
        hidden, residual = self.layers[-1].feed_forward(stream, None)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(CausalLM):
    qk_norm = False
    packed_modules_mapping: ClassVar[dict[str, tuple[str, str | int]]] = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.config, self.dtype = config, dtype
        self.model = LlamaModel(config, dtype, self.qk_norm, self.make_mlp,
                                self.make_attention,
                                [self.is_dense_moe_layer(i)
                                 for i in range(config.num_hidden_layers)])
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, dtype)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def make_mlp(self, layer_id: int) -> nn.Module:
        """The MLP block of layer `layer_id`; MoE models override this and nothing else."""
        return GatedMLP(self.config.hidden_size, self.config.intermediate_size, self.dtype)

    def make_attention(self, layer_id: int) -> nn.Module:
        """The attention block of layer `layer_id` (DeepSeek's MLA overrides it)."""
        return LlamaAttention(self.config, layer_id, self.dtype, self.qk_norm)

    def is_dense_moe_layer(self, layer_id: int) -> bool:
        """Whether layer `layer_id` is a dense-MLP layer of an MoE model (Qwen3-MoE's
        mlp_only_layers, DeepSeek's first_k_dense_replace layers: ModelConfig.moe says which):
        the layers `--moe-dense-tp-size 1` replicates (tessera.layers.communicator). None in a
        dense model."""
        moe = self.config.moe
        return moe is not None and not moe.is_moe_layer(layer_id)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def trunk(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.trunk(input_ids, positions)

    def finish(self, stream: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.finish(stream, rows)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def kv_cache_spec(self) -> MHASpec:
        attn = self.model.layers[0].self_attn
        return MHASpec(self.config.num_hidden_layers, attn.num_kv_heads, attn.head_dim,
                       self.dtype)

    def num_attention_heads(self) -> int:
        return self.model.layers[0].self_attn.num_heads

    def tied_checkpoint_names(self) -> set[str]:
        return {"lm_head.weight"} if self.config.tie_word_embeddings else set()


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: Llama with q/k/v bias, which ModelConfig turns on for model_type qwen2."""


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True
