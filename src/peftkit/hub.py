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


def model_card(base_model: Optional[str], tags: list[str]) -> str:
    """A minimal model card: the metadata the Hub uses to show the adapter as a ``peft`` one
    (loadable with ``peft`` and peftkit) over its base model.

    Example:
        >>> print(model_card("HuggingFaceTB/SmolLM2-135M-Instruct", ["lora"]).splitlines()[1])
        library_name: peft
    """
    lines = ["---", "library_name: peft"]
    if base_model and not os.path.isdir(base_model):  # a local path means nothing on the Hub
        lines.append(f"base_model: {base_model}")
    lines += ["tags:", *(f"- {tag}" for tag in ["peftkit", *tags])]
    lines += ["---", "", "# Adapter", "", "Written by peftkit in peft's format: load it with",
              "`PeftModel.from_pretrained(base_model, repo_id)` from `peftkit` or `peft`.", ""]
    return "\n".join(lines)


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
