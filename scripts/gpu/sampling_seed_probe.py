import numpy as np
import torch

from tessera.sampling import ops

V=32; N=20000
g=torch.Generator().manual_seed(0)
p=torch.softmax(torch.randn(V,generator=g)*1.5,-1).cuda()
probs=p.expand(N,V).contiguous()
exp=p.cpu().numpy()
def show(name, t):
    c=np.bincount(t.cpu().numpy(),minlength=V)/len(t)
    print(f"{name:28s} L1={np.abs(c-exp).sum():.3f}", np.round(c[:6],3))
print("exp", np.round(exp[:6],3))
show("seq seeds off0", ops.filtered_sampling_from_probs(probs, seed=torch.arange(N,device="cuda"), offset=torch.zeros(N,dtype=torch.int64,device="cuda"), filter_apply_order="min_p_first", backend="triton"))
show("seq seeds int off", ops.filtered_sampling_from_probs(probs, seed=torch.arange(N,device="cuda"), offset=0, backend="triton"))
show("one seed steps", ops.filtered_sampling_from_probs(probs, seed=torch.full((N,),1234,device="cuda"), offset=torch.arange(N,device="cuda"), backend="triton"))
show("int seed", ops.filtered_sampling_from_probs(probs, seed=1234, backend="triton"))
show("sampling_from_probs seq", ops.sampling_from_probs(probs, seed=torch.arange(N,device="cuda"), offset=0, backend="triton"))
show("big random seeds", ops.filtered_sampling_from_probs(probs, seed=torch.randint(0,2**62,(N,),device="cuda"), offset=0, backend="triton"))
show("torch backend seq", ops.filtered_sampling_from_probs(probs, seed=torch.arange(N,device="cuda"), offset=0, backend="torch"))
show("topk5 seq", ops.filtered_sampling_from_probs(probs, top_k=torch.full((N,),5,device="cuda"), seed=torch.arange(N,device="cuda"), offset=0, backend="triton"))
