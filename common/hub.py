"""Publishing a finished local folder (a merged model, a dataset) to the Hugging Face Hub.

The login is checked before any long work (`check_login`) and again before the
upload; no token is ever printed or written anywhere. An upload failure leaves
the local folder intact and says how to upload it by hand.
"""

from __future__ import annotations

from pathlib import Path

from common.cli import UserError


def check_repo_id(flag: str, repo_id: str) -> None:
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(
            f"{flag} {repo_id}: give the full repo id NAMESPACE/NAME, where NAMESPACE is your "
            "user name or an organisation you can write to"
        )


def check_login(flag: str, repo_id: str, *, retry: str = "") -> None:
    """Refuse unless a token is present and may write to `repo_id`'s namespace."""
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise UserError(
            f"{flag} {repo_id}: not logged in to the Hugging Face Hub. Run `hf auth login` "
            f"(or set HF_TOKEN to a token with write access). {retry}".strip()
        )
    try:
        user = HfApi().whoami()
    except Exception as err:  # offline, expired token, ...: the hub client raises many types
        raise UserError(f"{flag} {repo_id}: cannot check the Hub login ({err}). {retry}") from err
    writable = {user["name"], *(org["name"] for org in user.get("orgs", []))}
    namespace = repo_id.split("/")[0]
    if namespace not in writable:
        raise UserError(
            f"{flag} {repo_id}: logged in as {user['name']}, who can write to "
            f"{sorted(writable)}, not {namespace}. {retry}".strip()
        )


def push_folder(
    folder: str | Path, repo_id: str, *, repo_type: str = "model", flag: str = "--push_to_hub"
) -> str:
    """Upload `folder` to `repo_id` (created private if missing); return its URL."""
    from huggingface_hub import HfApi

    retry = f"The files are saved in {folder}; upload them with `hf upload {repo_id} {folder}`" + (
        f" --repo-type {repo_type}." if repo_type != "model" else "."
    )
    check_login(flag, repo_id, retry=retry)
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=True, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder))
    except Exception as err:
        raise UserError(f"{flag} {repo_id}: upload failed ({err}). {retry}") from err
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"https://huggingface.co/{prefix}{repo_id}"
