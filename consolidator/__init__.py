"""Consolidation: experiences -> transfer sets -> context distillation into LoRA adapters.

Import submodules directly (``consolidator.cycle``, ...); this package imports nothing heavy.
"""
