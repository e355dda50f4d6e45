"""The piecewise graph compiler (see DESIGN.md, "The piecewise graph, precisely").

* `splitting`: splitting ops (attention; register all-reduce / MoE all-to-all the same way) and
  the FX split.
* `backend`: the torch.compile backend that compiles the pieces, and `CompiledBackbone`, the
  backbone traced once with a dynamic token dimension.
* `piecewise`: per-size graph capture and replay of one piece, and the shared capture state.
* `capture_sizes`: which token counts are captured.
* `monitor`: run-time recompile detection (refused, logged, the batch runs eagerly).
* `weak_ref`, `fx_patches`: non-owning tensor aliases; the FX codegen fix for custom devices.
* `bench_pcg`: prefill latency with and without piecewise graphs.

`tessera.runner.piecewise_graph_runner` drives all of it for the ModelRunner.
"""
