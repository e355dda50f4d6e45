"""Triton kernels behind the `tessera::*` custom ops (see tessera.ops.custom_ops).

Each kernel module is imported only when a fast path first runs, so `import tessera.ops` does not
need Triton. Every kernel has a torch reference it is tested against: the op's `forward_native`
(RMSNorm, SiluAndMul, RotaryEmbedding) or `per_token_group_quant_fp8_torch`. On CPU the kernels run
under TRITON_INTERPRET=1 (tests, small sizes only).
"""
