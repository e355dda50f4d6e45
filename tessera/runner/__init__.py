from tessera.forward import ForwardBatch, ForwardMode

__all__ = ["ForwardBatch", "ForwardMode"]
