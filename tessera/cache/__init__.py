from tessera.cache.allocator import TokenSlotAllocator
from tessera.cache.kv_cache import KVCache
from tessera.cache.kv_pool import KVPool, MHAKVPool, MLAKVPool, ReqToTokenPool, make_kv_pool
from tessera.cache.radix import MatchResult, RadixCache
from tessera.cache.spec import KVCacheSpec, MHASpec, MLASpec

__all__ = ["KVCache", "KVCacheSpec", "KVPool", "MHAKVPool", "MHASpec", "MLAKVPool", "MLASpec",
           "MatchResult", "RadixCache", "ReqToTokenPool", "TokenSlotAllocator", "make_kv_pool"]
