"""Fast paths for adapter layers: pure torch autograd functions, one per file.

Import the functions from their modules (``from peftkit.kernels.lora_linear import lora_linear``):
the package re-exports nothing, so ``peftkit.kernels.lora_linear`` always names the module.
"""
