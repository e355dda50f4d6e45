from __future__ import annotations

from tessera.platforms.base import Platform, PlatformKind


class CpuPlatform(Platform):
    kind = PlatformKind.CPU
    device_type = "cpu"
    dist_backend = "gloo"
    default_attention_backend = "torch_native"
    default_sampling_backend = "torch"
    supports_full_graph = False
    supports_piecewise_graph = False
    supports_triton = False  # Triton runs on CPU only through TRITON_INTERPRET=1 (tests)

    @classmethod
    def is_available(cls) -> bool:
        return True

    def device_name(self, index: int = 0) -> str:
        import platform

        return platform.processor() or "cpu"
