"""LoRA on tied embeddings (``LoraConfig.ensure_weight_tying``; the generic part is
:mod:`peftkit.weight_tying`): a module sharing the input embedding's weight computes with the
embedding's LoRA tensors instead of its own.

An LM head ``nn.Linear(dim, vocab)`` holds the embedding table ``(vocab, dim)`` as its weight, so the
embedding's delta ``(B_e A_e)^T`` is the head's ``B_h A_h`` with ``A_h = B_e^T`` and ``B_h = A_e^T``
(``peft``'s layout: its tests compare exactly these). A second embedding (an encoder's
``embed_tokens`` tied to ``shared``) simply holds the same two parameters.

Example:
    >>> tie_lora_adapter(model.model.embed_tokens, model.lm_head, "default")  # doctest: +SKIP
    >>> model.lm_head.lora_A["default"].weight.data_ptr() == model.model.embed_tokens.lora_embedding_B["default"].data_ptr()  # doctest: +SKIP
    True
"""

from __future__ import annotations

from ..errors import TargetError
from ..weight_tying import TiedWeight
from .lora_layers import LoraEmbedding, LoraLayer, LoraLinear


def tie_lora_adapter(leader: LoraLayer, follower: LoraLayer, adapter_name: str) -> None:
    """Make ``follower``'s adapter ``adapter_name`` use ``leader``'s tensors (``leader``: the LoRA
    layer on the input embedding). Rank, alpha and scaling follow the leader's (a ``rank_pattern``
    entry for the follower alone cannot apply: the tensors are one).

    Example:
        >>> tie_lora_adapter(embed_layer, lm_head_layer, "default")  # doctest: +SKIP
    """
    where = f"ensure_weight_tying: {follower.key!r} is tied to {leader.key!r}"
    if not isinstance(leader, LoraEmbedding):
        raise TargetError(f"{where}, which is a {type(leader).__name__}; tying needs LoRA on the nn.Embedding itself")
    for layer in (leader, follower):
        if adapter_name in layer.lora_magnitude_vector:
            raise TargetError(f"{where}: DoRA adapters cannot be tied (each module's magnitude differs); "
                              "set use_dora=False or ensure_weight_tying=False")
    for setting in ("r", "lora_alpha", "scaling", "use_rslora"):
        getattr(follower, setting)[adapter_name] = getattr(leader, setting)[adapter_name]
    if isinstance(follower, LoraEmbedding):
        follower.lora_embedding_A[adapter_name] = leader.lora_embedding_A[adapter_name]
        follower.lora_embedding_B[adapter_name] = leader.lora_embedding_B[adapter_name]
    elif isinstance(follower, LoraLinear):
        vocab, dim = leader.base_layer.weight.shape
        if follower.in_out != (dim, vocab):
            raise TargetError(f"{where} but maps {follower.in_out[0]} -> {follower.in_out[1]} features, not the "
                              f"embedding's {dim} -> {vocab}; untie them or set ensure_weight_tying=False")
        if follower.lora_bias.get(adapter_name):
            raise TargetError(f"{where}: lora_bias cannot be tied (the embedding has no bias); set lora_bias=False")
        follower.lora_A[adapter_name] = TiedWeight(leader, "lora_embedding_B", adapter_name, transpose=True)
        follower.lora_B[adapter_name] = TiedWeight(leader, "lora_embedding_A", adapter_name, transpose=True)
    else:
        raise TargetError(f"{where}, but LoRA ties only nn.Linear and nn.Embedding layers, not {type(follower).__name__}")
