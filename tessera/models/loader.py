"""Model loading: HF directories (config.json + safetensors, sharded or not) and dummy weights."""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from tessera.config.model import ModelConfig
from tessera.distributed import get_tp_size, tensor_parallel_as
from tessera.layers.checkpoint_slice import CheckpointSlice
from tessera.layers.linear import LinearBase
from tessera.layers.quantization import UnquantizedLinearMethod
from tessera.layers.quantization.base import quantization as quantization_scope
from tessera.layers.quantization.fp8 import resolve_quant_config
from tessera.models.base import CausalLM
from tessera.models.presets import PRESETS, is_preset
from tessera.models.registry import get_model_class, supported_architectures

logger = logging.getLogger(__name__)


def load_model_config(model_path: str) -> ModelConfig:
    """ModelConfig of a preset name or an HF model directory; clear errors for bad paths."""
    if is_preset(model_path):
        return ModelConfig.from_hf_dict(PRESETS[model_path])
    if not os.path.exists(model_path):
        raise FileNotFoundError(
            f"model path {model_path!r} does not exist and is not a preset "
            f"(presets: {', '.join(sorted(PRESETS))})")
    config_file = os.path.join(model_path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{model_path!r} has no config.json; pass an HF model directory")
    try:
        with open(config_file) as f:
            hf = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file} is not valid JSON: {e}") from e
    config = ModelConfig.from_hf_dict(hf)
    get_model_class(config.architecture)  # unknown architectures fail here, listing the supported
    return config


def safetensors_files(model_path: str) -> list[str]:
    index = os.path.join(model_path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(model_path, n) for n in names]
    else:
        files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_path!r} "
                                f"(use --load-format dummy for random weights)")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"safetensors index names missing files: {missing}")
    return files


def iterate_safetensors(files: list[str]) -> Iterator[tuple[str, CheckpointSlice]]:
    """(name, CheckpointSlice) of every tensor: nothing is read until a weight loader narrows
    the slice to this rank's shard (or reads it whole)."""
    from safetensors import safe_open

    for path in tqdm(files, desc="loading safetensors shards", unit="file"):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118  (safe_open is not iterable)
                yield name, CheckpointSlice(f.get_slice(name))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Parameters made inside without an explicit dtype take `dtype`: how models are built here
    (benchmarks and tests that build layers on their own use it to match)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def init_dummy_weights(model: nn.Module, seed: int,
                       unsharded: Callable[[], nn.Module] | None = None) -> None:
    """Seeded random weights: norms and block-FP8 scales at 1, everything else N(0, 0.02) (fp8
    weights rounded from it), made on the model's device.

    Each parameter has its own generator, seeded by `seed` and its name, so the values do not
    depend on the order or the sharding of the parameters: with tensor parallelism
    (`unsharded` builds the TP=1 model on the meta device) a rank draws the whole TP=1 tensor
    and keeps its shard through the parameter's weight loader, so TP=N holds exactly the TP=1
    model's weights. The cost: every rank draws every full tensor (tp times the random numbers
    of its shard, one full tensor in memory at a time): fine for tests and benchmarks of
    moderate models, slow for large ones (load real weights there)."""
    params = list(model.named_parameters())
    device = params[0][1].device
    full_model = unsharded() if unsharded is not None else None
    full_params = dict(full_model.named_parameters()) if full_model is not None else {}
    full_modules = dict(full_model.named_modules()) if full_model is not None else {}
    for name, p in tqdm(params, desc="initializing dummy weights", unit="tensor",
                        disable=len(params) < 64):
        if "norm" in name or hasattr(p, "block_shape"):  # block-FP8 scales: unit scales
            p.data.fill_(1.0)
            continue
        generator = torch.Generator(device=device).manual_seed(
            (seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 63))
        shape = full_params[name].shape if full_model is not None else p.shape
        # fp8 weights are drawn in float32 (no normal_ for fp8) and rounded
        draw = torch.float32 if p.dtype == torch.float8_e4m3fn else p.dtype
        full = torch.empty(shape, dtype=draw, device=device).normal_(
            0.0, 0.02, generator=generator).to(p.dtype)
        if full_model is None:
            p.data.copy_(full)
            continue
        module = full_modules[name.rpartition(".")[0]]
        parts = module.checkpoint_parts(full) if hasattr(module, "checkpoint_parts") else [
            (None, full)]
        loader = getattr(p, "weight_loader", None)
        for shard_id, part in parts:
            if loader is None:
                p.data.copy_(part)  # replicated
            elif shard_id is None:
                loader(p, part)
            else:
                loader(p, part, shard_id)


def keep_unquantized(model: CausalLM, names: tuple[str, ...]) -> None:
    """Linear layers named by a checkpoint's `modules_to_not_convert` get unquantized weights
    (the names are checkpoint names: q_proj matches our qkv_proj through the model's
    packed_modules_mapping). Names that match no quantized layer (lm_head, an MoE router) are
    unquantized here anyway."""
    ours = []
    for name in names:
        for ckpt_part, (our_part, _) in model.packed_modules_mapping.items():
            if f".{ckpt_part}." in f".{name}.":  # one fragment, once (gate_proj -> gate_up_proj)
                name = f".{name}.".replace(f".{ckpt_part}.", f".{our_part}.")[1:-1]
                break
        ours.append(name)
    for module_name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if not isinstance(module, LinearBase) or isinstance(method, UnquantizedLinearMethod):
            continue
        if any(module_name == n or module_name.endswith(f".{n}") or f".{n}." in
               f".{module_name}." for n in ours):
            module.set_quant_method(UnquantizedLinearMethod())


def load_model(model_path: str, model_config: ModelConfig, load_format: str, dtype: torch.dtype,
               device: torch.device | str, seed: int = 0,
               quantization: str | None = None) -> CausalLM:
    """The model with its weights. `quantization` is `--quantization` (None: the checkpoint's
    own quantization_config decides; see tessera.layers.quantization.fp8)."""
    model_cls = get_model_class(model_config.architecture)
    if load_format == "auto":
        load_format = "dummy" if is_preset(model_path) else "safetensors"
    if load_format == "safetensors" and is_preset(model_path):
        raise ValueError(f"preset {model_path!r} has no weight files; use --load-format dummy")
    quant = resolve_quant_config(model_config.hf_config, quantization)
    with torch.device(device), default_dtype(dtype), quantization_scope(quant):
        model = model_cls(model_config, dtype)
        if quant is not None and getattr(quant, "modules_to_not_convert", ()):
            keep_unquantized(model, quant.modules_to_not_convert)
    if quant is not None:
        logger.info("quantization: %s", quant)
    if load_format == "dummy":
        def unsharded() -> nn.Module:
            with (tensor_parallel_as(0, 1), torch.device("meta"), default_dtype(dtype),
                  quantization_scope(quant)):
                model = model_cls(model_config, dtype)
                if quant is not None and getattr(quant, "modules_to_not_convert", ()):
                    keep_unquantized(model, quant.modules_to_not_convert)
                return model

        init_dummy_weights(model, seed, unsharded if get_tp_size() > 1 else None)
    elif load_format == "safetensors":
        loaded = model.load_weights(iterate_safetensors(safetensors_files(model_path)))
        expected = {n for n, _ in model.named_parameters()}
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(f"checkpoint in {model_path!r} lacks weights for: {missing[:8]}"
                             f"{' ...' if len(missing) > 8 else ''}")
    else:
        raise ValueError(f"unknown load format {load_format!r}; choose auto, safetensors, dummy")
    model.process_weights_after_loading()
    logger.info("loaded %s (%s, %s) on %s: %.2f B parameters", model_config.architecture,
                load_format, dtype, device,
                sum(p.numel() for p in model.parameters()) / 1e9)
    return model.eval()


__all__ = ["default_dtype", "load_model", "load_model_config", "supported_architectures"]
