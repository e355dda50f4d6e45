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
from tessera.config.model import ModelConfig, parse_dtype

__all__ = [
    "BackendConfig", "CacheConfig", "EngineConfig", "GraphConfig", "LoadConfig", "ModelConfig",
    "ParallelConfig", "SchedulerConfig", "ServerConfig", "parse_dtype",
]
