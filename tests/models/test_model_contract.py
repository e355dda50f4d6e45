"""A model defined outside the package (tests/models/tiny_gated_model.py: one file and a registry
entry) runs through the engine's runner and matches its own PyTorch reference: the model
contract (tessera.models.base) is all the runner, the loader and the graphs need."""
from __future__ import annotations

import json

import pytest
import torch
from runner_driver import RunnerDriver
from safetensors.torch import save_file
from tiny_gated_model import ARCHITECTURE, TinyGatedReference

from tessera.config import EngineConfig
from tessera.forward.batch import ForwardMode
from tessera.runner.model_runner import ModelRunner

CONFIG = {"architectures": [ARCHITECTURE], "model_type": "tiny_gated", "vocab_size": 320,
          "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
          "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 512,
          "torch_dtype": "float32"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The reference model's random weights saved as an HF-style directory."""
    torch.manual_seed(0)
    ref = TinyGatedReference(CONFIG).eval()
    path = tmp_path_factory.mktemp("tiny_gated")
    (path / "config.json").write_text(json.dumps(CONFIG))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(path / "model.safetensors"))
    return str(path), ref


def runner_for(path: str, **kw) -> ModelRunner:
    return ModelRunner(EngineConfig.from_kwargs(
        model_path=path, device="cpu", dtype="float32", kv_cache_tokens=2048,
        max_running_requests=8, disable_cuda_graph=True, **kw))


@pytest.mark.parametrize("mode", ["eager", "piecewise"])
def test_outside_model_matches_its_reference(checkpoint, mode):
    """Prefill of a mixed batch (every position), decode steps, greedy tokens: equal to the
    reference within float32 rounding, eagerly and through the compiled piecewise backbone."""
    path, ref = checkpoint
    kw = ({"disable_piecewise_cuda_graph": True, "attention_backend": "torch_native"}
          if mode == "eager" else {"enforce_piecewise_cuda_graph": True,
                                   "piecewise_cuda_graph_max_tokens": 64,
                                   "attention_backend": "torch_native"})
    runner = runner_for(path, **kw)
    assert runner.kv_cache_spec.num_layers == CONFIG["num_hidden_layers"]
    drv = RunnerDriver(runner)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 320, (n,), generator=gen).tolist() for n in (1, 7, 23)]
    rows = [drv.new_request() for _ in prompts]
    last, every = drv.step(list(zip(rows, prompts)))
    start = 0
    with torch.no_grad():
        for p in prompts:
            want = ref(torch.tensor(p))
            torch.testing.assert_close(every[start:start + len(p)], want, atol=1e-4, rtol=0)
            start += len(p)
    # greedy decoding, one token per request per step, against the reference on the whole text
    texts = [list(p) for p in prompts]
    for _ in range(4):
        tokens = last.argmax(-1).tolist()
        with torch.no_grad():
            want = [int(ref(torch.tensor(t))[-1].argmax()) for t in texts]
        assert tokens == want
        for t, tok in zip(texts, tokens):
            t.append(tok)
        last, _ = drv.step([(r, [tok]) for r, tok in zip(rows, tokens)], ForwardMode.DECODE,
                           all_logits=False)
    with torch.no_grad():
        want = torch.stack([ref(torch.tensor(t))[-1] for t in texts])
    torch.testing.assert_close(last, want, atol=1e-4, rtol=0)


def test_checkpoint_without_a_weight_is_refused(checkpoint, tmp_path):
    _, ref = checkpoint
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    state = {k: v.contiguous() for k, v in ref.state_dict().items() if "down_proj" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks weights for"):
        runner_for(str(tmp_path), disable_piecewise_cuda_graph=True)
