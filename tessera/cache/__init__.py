from tessera.cache.allocator import TokenSlotAllocator
from tessera.cache.radix import MatchResult, RadixCache

__all__ = ["MatchResult", "RadixCache", "TokenSlotAllocator"]
