import torch
from tessera.compilation.bench_pcg import build_runner
from tessera.compilation.splitting import op_qualname
runner, _ = build_runner("llama3-8b", 64, True, "eager", "cuda")
rot = runner.model.model.layers[0].self_attn.rotary_emb
print("bound", rot.rotate_with_kernel, rot.bound_forward, type(rot._forward_method), getattr(rot._forward_method, "__name__", None))
print("fuse", runner.model.model.layers[0].self_attn.attn.fuse_q_rope, runner.attn_backend.name)
(pcg,) = [r for r in runner.graph_runners if type(r).__name__ == "PiecewiseGraphRunner"]
for p in pcg.backend.pieces[:2]:
    print(p.is_splitting, [op_qualname(n.target) or str(n.target) for n in p.module.graph.nodes if n.op == "call_function"])
