"""``push_to_hub`` for adapters and configs, through ``huggingface_hub``'s upload API.

The files are written with ``save_pretrained`` into a temporary folder (with a model card that
tells the Hub the folder is a ``peft`` adapter) and uploaded as one commit, so a repository never
holds half an adapter.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Optional, Union

README_NAME = "README.md"


def model_card(base_model: Optional[str], tags: list[str], existing: Optional[str] = None,
               pipeline_tag: Optional[str] = None) -> str:
    """The ``README.md`` of a saved adapter, as ``peft`` writes it: huggingface_hub's model card
    template (or ``existing``, a card already in the folder, whose text is kept) with the metadata
    the Hub uses to show the adapter as a ``peft`` one: ``library_name: peft``, the base model, the
    tags (``peftkit`` and the methods, plus any the card had), the pipeline tag when it is known,
    and the library that wrote it under "Framework versions".

    Example:
        >>> card = model_card("HuggingFaceTB/SmolLM2-135M-Instruct", ["lora"])
        >>> "library_name: peft" in card and "- peftkit" in card
        True
    """
    from huggingface_hub import ModelCard, ModelCardData

    from . import __version__

    card = ModelCard(existing) if existing is not None else ModelCard.from_template(ModelCardData())
    card.data["library_name"] = "peft"
    hub_base = base_model if base_model and not os.path.isdir(base_model) else None  # a local path means nothing there
    if hub_base:
        card.data["base_model"] = hub_base
        tags = [*tags, f"base_model:adapter:{hub_base}"]  # what the Hub's inference providers look for
    card.data["tags"] = list(dict.fromkeys([*(card.data.get("tags") or []), "peftkit", *tags]))
    if pipeline_tag and not card.data.get("pipeline_tag"):
        card.data["pipeline_tag"] = pipeline_tag
    lines = card.text.splitlines()
    written_by = f"- peftkit {__version__} (peft's file format)"
    if written_by not in lines:
        heading = "### Framework versions"
        if heading in lines:
            lines.insert(lines.index(heading) + 2, written_by)
        else:
            lines.append(f"{heading}\n\n{written_by}")
    card.text = "\n".join(lines)
    return str(card)


def push_folder(
    write: Callable[[str], None],
    repo_id: str,
    *,
    card: Optional[str] = None,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    private: Optional[bool] = None,
    token: Union[bool, str, None] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
) -> str:
    """Create ``repo_id`` if needed, call ``write(folder)`` on a temporary folder and upload the
    folder as one commit; returns the commit's URL. ``card``, if given, is written as ``README.md``
    (replacing the one ``write`` may have written).

    Example:
        >>> push_folder(model.save_pretrained, "me/my-adapter")   # doctest: +SKIP
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token if isinstance(token, str) else None)
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        write(folder)
        readme = os.path.join(folder, README_NAME)
        if card is not None:
            with open(readme, "w", encoding="utf-8") as f:
                f.write(card)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload adapter",
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
    return str(getattr(commit, "commit_url", commit))
