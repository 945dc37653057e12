"""Known bugs of the reference library (``peft``) under the versions the suite runs with.

Interop tests compare peftkit with the real ``peft``. Where ``peft`` itself is wrong for a
particular combination of versions, the comparison cannot be made; each such case is declared here
once, with the versions it applies to and the reason, and the tests that meet it say so (an
``xfail(strict=True)`` when ``peft`` fails outright, or a comparison against an independent
reference instead of ``peft``). Every condition is scoped to the versions where the bug was seen,
so a fixed ``peft`` (or a ``transformers`` without the trigger) runs the full comparison again,
and a strict xfail that starts passing fails the suite until its entry is removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import peft
import pytest
import transformers
from packaging.version import Version

PEFT = Version(peft.__version__)
TRANSFORMERS = Version(transformers.__version__)


@dataclass(frozen=True)
class UpstreamBug:
    reason: str
    present: bool

    def xfail(self) -> pytest.MarkDecorator:
        """An ``xfail(strict=True)`` mark while the bug is present, a no-op mark otherwise."""
        return pytest.mark.xfail(self.present, reason=self.reason, strict=True)


# transformers 5.24 renamed model.forward's `past_key_values` to `cache`. peft <= 0.21.2 looks
# for the old name in the signature of classifier / QA backbones before prefix tuning and refuses
# with "Model does not support past key values which are required for prefix tuning".
PEFT_PREFIX_TUNING_CLASSIFIERS = UpstreamBug(
    reason=(
        f"peft {PEFT} refuses prefix tuning on every SEQ_CLS/TOKEN_CLS/QUESTION_ANS model under transformers "
        f"{TRANSFORMERS} (>= 5.24 names the forward argument `cache`; peft <= 0.21.2 looks for `past_key_values`)"
    ),
    present=PEFT <= Version("0.21.2") and TRANSFORMERS >= Version("5.24"),
)

# The same rename in `generate`: transformers >= 5.24 passes the cache to forward as `cache`, while
# peft <= 0.21.2 reads and writes `past_key_values` in its prompt-learning forward. Prompt tuning
# and P-tuning then prepend the virtual tokens again at every decoding step, and prefix tuning's
# prefix (put in `past_key_values`, which a forward given `cache` ignores) is lost after the first
# step. peft's forward is right; its cached `generate` is not (seen on Llama, T5, GPT-2 with beams).
PEFT_PROMPT_LEARNING_GENERATE = UpstreamBug(
    reason=(
        f"peft {PEFT}'s prompt-learning generate mishandles the attention cache under transformers {TRANSFORMERS} "
        "(>= 5.24 passes it as `cache`; peft <= 0.21.2 looks for `past_key_values`)"
    ),
    present=PEFT <= Version("0.21.2") and TRANSFORMERS >= Version("5.24"),
)

# peft's PeftModelForSeq2SeqLM.forward hands `input_ids` to Whisper's decoder a second time:
# "TypeError: WhisperDecoder.forward() got multiple values for keyword argument 'input_ids'", with
# adapters saved by peft itself (seen with transformers 5.24). generate() and a task-less PeftModel work.
PEFT_WHISPER_SEQ2SEQ_FORWARD = UpstreamBug(
    reason=(
        f"peft {PEFT}'s PeftModelForSeq2SeqLM.forward passes input_ids twice to Whisper's decoder under transformers "
        f"{TRANSFORMERS} (TypeError: got multiple values for keyword argument 'input_ids')"
    ),
    present=PEFT <= Version("0.21.2") and TRANSFORMERS >= Version("5.0"),
)

# peft's add_weighted_adapter (LoRA and IA3) gives wrong adapters or fails in the cases listed in
# tests/arithmetic/test_combine_vs_peft.py (rsLoRA, DoRA, IA3 weights that do not sum to 1, svd on
# Conv1d or at a rank above a layer's size, DARE at density 0, rank_pattern with element-wise types),
# and its convert_to_lora leaves DoRA's magnitude out and refuses IA3 (tests/arithmetic/test_convert.py);
# docs/adapter-arithmetic.md gives the measured errors. Seen in 0.21.2 (issues #3761, #3737 upstream).
PEFT_WEIGHTED_ADAPTER = UpstreamBug(
    reason=f"peft {PEFT}'s add_weighted_adapter / convert_to_lora are wrong for rsLoRA, DoRA, IA3 and some shapes",
    present=PEFT <= Version("0.21.2"),
)

# peft's LoRA layer for nn.MultiheadAttention adds out_proj's update twice: merge() writes W + dW
# into out_proj's weight and then calls out_proj.merge(), which adds dW again (unmerge subtracts
# both, so round trips hide it). Its forward merges and unmerges around every call, so peft's
# outputs use W + 2 dW for out_proj (open upstream fix: huggingface/peft#3774). peftkit applies
# dW once; the tests compare with an nn.MultiheadAttention given W + dW instead of with peft.
PEFT_MHA_OUT_PROJ_TWICE = UpstreamBug(
    reason=f"peft {PEFT} applies the LoRA update of nn.MultiheadAttention's out_proj twice (huggingface/peft#3774)",
    present=PEFT <= Version("0.21.2"),
)
