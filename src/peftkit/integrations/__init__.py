"""Partners: peftkit adapted to the libraries people combine ``peft`` with.

One module per partner, each importing its partner at the top, so a module is only usable (and
only ever imported) where the partner is installed; peftkit's core never imports this package.

- :mod:`peftkit.integrations.transformers`: ``transformers.Trainer`` saving and resuming adapters.
- :mod:`peftkit.integrations.trl`: TRL's SFT / DPO / GRPO / RLOO trainers on peftkit models.
- :mod:`peftkit.integrations.diffusers`: LoRA on diffusers models in diffusers' own file format.
- :mod:`peftkit.integrations.dreambooth`: DreamBooth-style LoRA training of diffusers UNet pipelines.
- :mod:`peftkit.integrations.peft`: peftkit's adapter layers seen as ``peft``'s by libraries that look for those.

What each covers, tested beside ``peft``: docs/integrations.md.

Example:
    >>> from peftkit.integrations.trl import SFTTrainer         # doctest: +SKIP
"""
