"""tessera: an LLM inference engine and OpenAI-compatible server with piecewise CUDA graphs."""
from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: `import tessera` stays cheap (the CLI imports torch only when it needs it)
    if name == "LLM":
        from tessera.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from tessera.sampling.params import SamplingParams

        return SamplingParams
    raise AttributeError(name)


__all__ = ["LLM", "SamplingParams", "__version__"]
