from tessera.runner.forward_batch import ForwardBatch, ForwardMode

__all__ = ["ForwardBatch", "ForwardMode"]
