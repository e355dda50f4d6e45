from tessera.config.engine import (
    BackendConfig,
    CacheConfig,
    EngineConfig,
    GraphConfig,
    LoadConfig,
    ParallelConfig,
    SchedulerConfig,
    ServerConfig,
)


def __getattr__(name: str):
    # lazy: model.py imports torch, which the server must not wait for before it claims its port
    if name in ("ModelConfig", "parse_dtype"):
        from tessera.config import model

        return getattr(model, name)
    raise AttributeError(name)

__all__ = [
    "BackendConfig", "CacheConfig", "EngineConfig", "GraphConfig", "LoadConfig", "ModelConfig",
    "ParallelConfig", "SchedulerConfig", "ServerConfig", "parse_dtype",
]
