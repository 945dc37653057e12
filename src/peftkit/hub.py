"""``push_to_hub`` for adapters and configs, through ``huggingface_hub``'s upload API.

The files are written with ``save_pretrained`` into a temporary folder (with a model card that
tells the Hub the folder is a ``peft`` adapter) and uploaded as one commit, so a repository never
holds half an adapter.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Optional, Union

from .errors import AdapterNotFoundError
from .names import child_path, short_repr

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


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    subfolder: Optional[str] = None,
    revision: Optional[str] = None,
    **hub_kwargs: Any,
) -> str:
    """Find ``filename`` in a local folder, or download it from the Hub (users have network).

    Example:
        >>> resolve_file("out/adapter", "adapter_config.json")   # doctest: +SKIP
        'out/adapter/adapter_config.json'
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path) or "\0" in str(name_or_path):
        raise AdapterNotFoundError(f"the adapter location must be a folder path or a Hub id, got {short_repr(name_or_path)}")
    folder = child_path(name_or_path, subfolder, what="subfolder") if subfolder else str(name_or_path)
    local = os.path.join(folder, filename)
    if os.path.isfile(local):
        return local
    if os.path.isdir(folder) or os.path.isabs(str(name_or_path)) or str(name_or_path).startswith("."):
        raise AdapterNotFoundError(f"{local} does not exist: is {folder!r} a folder written by save_pretrained()?")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(str(name_or_path), filename, subfolder=subfolder, revision=revision, **hub_kwargs)
    except Exception as e:  # offline, unknown repo, missing file: one clear message
        raise AdapterNotFoundError(
            f"could not find {filename!r} for {str(name_or_path)!r}: not a local folder, and the Hub lookup "
            f"failed ({type(e).__name__}: {e})"
        ) from None
