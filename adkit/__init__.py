"""adkit: Algorithm Distillation research kit."""

__version__ = "0.1.0"
