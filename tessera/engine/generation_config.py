"""A checkpoint's generation_config.json: sampling defaults and extra EOS ids, read at load as
vLLM reads it (`--generation-config auto`).

The EOS ids join the model's (Llama 3 instruct lists <|eot_id|> there, not in config.json); the
sampling defaults (temperature, top_p, top_k, min_p, repetition_penalty) apply to OpenAI requests
that do not set the field themselves.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclasses.dataclass(frozen=True)
class GenerationDefaults:
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)
    eos_token_ids: tuple[int, ...] = ()


def load_generation_config(model_path: str | None) -> GenerationDefaults:
    """What `model_path/generation_config.json` sets; empty when there is no such file."""
    if model_path is None:
        return GenerationDefaults()
    path = os.path.join(model_path, "generation_config.json")
    if not os.path.isfile(path):
        return GenerationDefaults()
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos if isinstance(eos, list) else [] if eos is None else [eos])
    sampling = {k: raw[k] for k in SAMPLING_KEYS if raw.get(k) is not None}
    if sampling.get("top_k") == 0:  # HF's "off"
        sampling.pop("top_k")
    defaults = GenerationDefaults(sampling, tuple(int(t) for t in eos_ids))
    logger.info("generation_config.json: sampling defaults %s, EOS ids %s",
                defaults.sampling or "none", list(defaults.eos_token_ids) or "none")
    return defaults
