from tessera.cache.allocator import TokenSlotAllocator

__all__ = ["TokenSlotAllocator"]
