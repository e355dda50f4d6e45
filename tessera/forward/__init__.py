"""ForwardBatch and the forward context: the data every layer reads (the bottom of the stack)."""
from tessera.forward.batch import ForwardBatch, ForwardMode
from tessera.forward.context import ForwardContext, get_forward_context, set_forward_context

__all__ = ["ForwardBatch", "ForwardContext", "ForwardMode", "get_forward_context",
           "set_forward_context"]
