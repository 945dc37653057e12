"""Fast paths for adapter layers (pure torch autograd functions; Triton kernels on GPU later)."""

from .lora_linear import fast_path_applies, lora_linear

__all__ = ["fast_path_applies", "lora_linear"]
