from __future__ import annotations

import os
import sys

import pytest
import torch

# Without CUDA the Triton kernels run in Triton's interpreter. @triton.jit reads TRITON_INTERPRET
# when it decorates (triton.language's own helpers included), so it is set here, before any test
# module is collected: a module that imports triton first (torch.compile's inductor does) would
# otherwise leave those helpers compiled-only and the interpreter unable to call them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Under pytest-xdist (scripts/test.sh: -n auto --dist loadgroup) each worker gets its share of the
# cores instead of every worker's torch using all of them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // workers)))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    # --dist loadgroup: the tests sharing a module-scoped fixture (a built runner, a compiled
    # backbone, a started server) run in one worker, so it is built once; one group per fixture
    # parameter (llama / qwen3 / ...) so those spread over the workers. GPU tests run in one
    # worker, one after another, as before xdist.
    cuda = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            if not cuda:
                item.add_marker(skip)
                continue
            item.add_marker(pytest.mark.xdist_group("gpu"))
            continue
        defs = getattr(item, "_fixtureinfo", None)
        shared = sorted(name for name, fdefs in (defs.name2fixturedefs.items() if defs else ())
                        if fdefs[-1].scope in ("module", "class", "package"))
        if shared:
            params = getattr(item, "callspec", None)
            key = [str(params.params[n]) for n in shared if params and n in params.params]
            item.add_marker(pytest.mark.xdist_group("::".join([item.nodeid.split("::")[0], *key])))
