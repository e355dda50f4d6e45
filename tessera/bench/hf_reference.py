"""`tessera bench latency --compare hf`: an HF transformers model of the same shape holding the
SAME weights as tessera's (copied over, q/k/v and gate/up un-merged; built on the meta device so
nothing is initialised twice), timed on the same tokens."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from tessera.bench.timing import RunTimes
from tessera.cache.spec import MHASpec

if TYPE_CHECKING:
    from tessera.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def hf_config(model_path: str):
    """The transformers config of a preset (built from its dict) or an HF model directory."""
    import transformers

    from tessera.models.presets import PRESETS, is_preset

    if is_preset(model_path):
        d = dict(PRESETS[model_path])
        return transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    return transformers.AutoConfig.from_pretrained(model_path)


def hf_state_dict(model: torch.nn.Module, num_heads: int, num_kv_heads: int, head_dim: int
                  ) -> dict[str, torch.Tensor]:
    """tessera's weights under HF names: merged qkv_proj / gate_up_proj split back apart; stacked
    experts (w13 [E, 2I, H], w2 [E, H, I]) under transformers 5's stacked names, which hold the
    same layout (gate rows before up rows)."""
    q, kv = num_heads * head_dim, num_kv_heads * head_dim
    # the model's checkpoint renames undone (e.g. DeepSeek's shared_experts -> shared_expert);
    # parameters only: buffers are tessera's own (DeepSeek's absorbed w_uk / w_uv)
    renames = getattr(model, "checkpoint_renames", {})
    out: dict[str, torch.Tensor] = {}
    buffers = {name for name, _ in model.named_buffers()}
    for name, tensor in model.state_dict().items():
        if name in buffers:
            continue
        for checkpoint_name, ours in renames.items():
            name = name.replace(ours, checkpoint_name)
        stacked = {"w13_weight": "experts.gate_up_proj", "w2_weight": "experts.down_proj"}
        prefix, _, last = name.rpartition(".")
        if last in stacked:
            out[f"{prefix}.{stacked[last]}"] = tensor
        elif ".qkv_proj." in name:
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.split([q, kv, kv])):
                out[name.replace("qkv_proj", part)] = piece
        elif ".gate_up_proj." in name:
            for part, piece in zip(("gate_proj", "up_proj"), tensor.chunk(2)):
                out[name.replace("gate_up_proj", part)] = piece
        else:
            out[name] = tensor
    return out


def _rebuild_rotary(model: torch.nn.Module, device: torch.device) -> None:
    """to_empty() leaves buffers uninitialised; the rotary inv_freq buffers are the only ones in
    these models and are recomputed by constructing their modules again on the device."""
    rebuilt: list[str] = []
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):
            parent_name, _, attr = name.rpartition(".")
            with torch.device(device):
                setattr(model.get_submodule(parent_name), attr, type(module)(config=module.config))
            rebuilt.append(name + ".")
    stale = [n for n, _ in model.named_buffers() if not any(n.startswith(r) for r in rebuilt)]
    if stale:
        raise RuntimeError(f"HF model buffers left uninitialised by to_empty(): {stale[:4]}")


class HFLatency:
    """The same case on HF transformers (eager, default attention), same weights and tokens."""

    def __init__(self, runner: ModelRunner, model_path: str,
                 state: dict[str, torch.Tensor] | None = None) -> None:
        """Weights copied from `runner`'s model, or from `state` (tessera_state_for_hf's host
        copy, when the runner had to be freed first to make room)."""
        import transformers

        self.platform, self.device = runner.platform, runner.device
        config = hf_config(model_path)
        start = time.perf_counter()
        with torch.device("meta"):  # no init pass: every weight is copied from tessera below
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=runner.dtype)
        model.to_empty(device=self.device)
        model.tie_weights()  # to_empty() gives tied parameters separate storage again
        _rebuild_rotary(model, self.device)
        if state is None:
            state = tessera_state_for_hf(runner)
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
        self.model = model.eval()
        self.attn_implementation = getattr(model.config, "_attn_implementation", None)
        self.version = transformers.__version__
        logger.info("HF %s (%s attention) built in %.1f s", type(model).__name__,
                    self.attn_implementation, time.perf_counter() - start)

    @torch.inference_mode()
    def run(self, prompts: list[list[int]], output_len: int) -> RunTimes:
        sync = self.platform.synchronize
        ids = torch.tensor(prompts, dtype=torch.int64, device=self.device)
        sync()
        start = time.perf_counter()
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        tokens = logits.argmax(-1)
        tokens.tolist()  # read like an engine step does (HF's generate syncs per step too)
        sync()
        times = RunTimes((time.perf_counter() - start) * 1e3, [], logits)
        cache = out.past_key_values
        for _ in range(output_len - 1):
            start = time.perf_counter()
            out = self.model(input_ids=tokens[:, None], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            tokens = out.logits[:, -1].argmax(-1)
            tokens.tolist()
            sync()
            times.decode_ms.append((time.perf_counter() - start) * 1e3)
        return times


def tessera_state_for_hf(runner: ModelRunner, device: str | None = None
                         ) -> dict[str, torch.Tensor]:
    """The runner's weights under HF names (on `device` when given: "cpu" keeps a host copy)."""
    spec = runner.model.kv_cache_spec()
    heads = runner.model.num_attention_heads()
    # MLA models (MLASpec) have no merged qkv_proj to split: the head figures go unused
    kv_heads, head_dim = (spec.num_kv_heads, spec.head_dim) if isinstance(spec, MHASpec) else \
        (heads, 0)
    state = hf_state_dict(runner.model, heads, kv_heads, head_dim)
    if device is not None:
        state = {name: tensor.to(device) for name, tensor in state.items()}
    return state


def fits_beside(runner: ModelRunner) -> bool:
    """Whether a second copy of the model's weights (HF's) fits in the device memory left free
    beside the runner, with 10% to spare for HF's activations and cache."""
    free, _ = runner.platform.mem_get_info()
    weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    return weights * 1.1 < free


def logits_check(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    """How close HF's first-token logits are to tessera's (a wrong weight copy shows here)."""
    ours, theirs = ours.float(), theirs.float().to(ours.device)
    return {"max_abs_logit_diff": float((ours - theirs).abs().max()),
            "max_abs_logit": float(ours.abs().max()),  # the scale the difference compares to
            "first_token_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())}
