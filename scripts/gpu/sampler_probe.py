import sys; sys.path.insert(0, "tests/sampling")
import numpy as np
from test_sampler import CASES, N, V, build, fixed_logits, reference_distribution

from tessera.sampling.sampler import Sampler

logits = fixed_logits()
for name, params in CASES.items():
    exp = reference_distribution(logits, params)
    for backend in ["torch", "triton"]:
        info = build([params] * N, seeds=list(range(N)), device="cuda")
        t = Sampler(backend).sample(logits.cuda().expand(N, V), info).token_ids.cpu().numpy()
        c = np.bincount(t, minlength=V) / N
        print(name, backend, "L1=%.3f" % np.abs(c - exp).sum(), "argmax", c.argmax(), exp.argmax())
