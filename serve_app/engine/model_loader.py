"""Find a Reverb model's files and build it, refusing anything ambiguous.

Rev's own ``wenet.cli.reverb.load_model`` takes whichever ``*.pt`` a glob returns
first, resolves relative paths against the checkpoint's *real* folder (which breaks
on hub snapshots, whose files are symlinks into a blob store), clones with git, and
loads weights with ``strict=False`` (a config that does not match the weights leaves
them silently random). This module does the same job with explicit paths, exactly
one checkpoint, a strict key check and one-line errors that name the fix.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from serve_app.wire import ModelLoadError

log = logging.getLogger(__name__)

HUB_MODELS: dict[str, str] = {"reverb_asr_v1": "Revai/reverb-asr"}
"""Model names served from the hub, and their repository ids."""

DEFAULT_CACHE_DIR = Path(
    os.environ.get("REVERB_CACHE_DIR", Path.home() / ".cache" / "reverb-serve")
)


_CONFIG_PATHS = (
    ("cmvn_conf", "cmvn_file"),
    ("tokenizer_conf", "bpe_path"),
    ("tokenizer_conf", "symbol_table_path"),
)
"""The config entries that name files of the model folder."""


@dataclass(frozen=True)
class ModelFiles:
    """Absolute paths of everything one Reverb model needs."""

    directory: Path
    config: Path
    checkpoint: Path
    cmvn: Path
    bpe_model: Path
    units: Path


def model_id(ref: str) -> str:
    """The id a model reference is served as: a folder's base name, else the name.

    ``models/demo`` and ``/srv/models/demo/`` are both ``demo``; ``reverb_asr_v1``
    stays itself. The CLI, the engine and the Serve config all name models this way.
    """
    if "/" in ref or os.sep in ref or Path(ref).expanduser().exists():
        return Path(ref).expanduser().name or ref
    return ref


def resolve_model_dir(
    ref: str, *, cache_dir: Path | None = None, offline: bool | None = None
) -> Path:
    """Turn a model reference (a local folder or a hub model name) into a local folder.

    Hub models are fetched as a snapshot into ``cache_dir`` (no git), with the token
    from ``HF_TOKEN``; in offline mode (``HF_HUB_OFFLINE=1`` or ``offline=True``) only
    the cache is looked at.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.absolute()
    if ref not in HUB_MODELS:
        known = ", ".join(sorted(HUB_MODELS))
        raise ModelLoadError(
            f"Model {ref!r} is neither an existing directory nor a known model name "
            f"({known}); pass a model folder path or one of those names."
        )
    return _download_snapshot(HUB_MODELS[ref], cache_dir or DEFAULT_CACHE_DIR, offline)


def _download_snapshot(repo_id: str, cache_dir: Path, offline: bool | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    token = os.environ.get("HF_TOKEN") or None
    try:
        folder = snapshot_download(
            repo_id=repo_id,
            cache_dir=str(cache_dir),
            token=token,
            local_files_only=offline,
            allow_patterns=["*.yaml", "*.pt", "*.model", "*.txt", "*.json", "*cmvn*"],
        )
    except GatedRepoError as exc:
        hint = "set HF_TOKEN to a token" if token is None else "use a token"
        raise ModelLoadError(
            f"{repo_id} is gated: accept its licence on the hub and {hint} of an account "
            "that has access."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(
            f"{repo_id} was not found or needs authentication: set HF_TOKEN to a token "
            "with access to it."
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"{repo_id} is not in the cache {cache_dir} and downloads are off "
            "(HF_HUB_OFFLINE=1, offline mode): start once with HF_HUB_OFFLINE unset and "
            "HF_TOKEN set so it is downloaded there, or point the model at a local folder."
        ) from exc
    except OSError as exc:
        raise ModelLoadError(
            f"Could not download {repo_id} into {cache_dir}: {exc}. Check the network, "
            "HF_TOKEN and that the cache folder is writable."
        ) from exc
    return Path(folder)


def locate_model_files(directory: Path, *, checkpoint_name: str | None = None) -> ModelFiles:
    """Find config, checkpoint, CMVN and tokenizer files inside one model folder.

    Paths named in config.yaml are taken relative to *this* folder (never to a
    symlink's target), and exactly one checkpoint must be present unless one is named.
    """
    config = directory / "config.yaml"
    if not config.is_file():
        raise ModelLoadError(f"{config} is missing: a Reverb model folder needs config.yaml.")
    configs = read_config(config)
    checkpoint = _pick_checkpoint(directory, checkpoint_name)
    cmvn, bpe, units = (_config_path(directory, configs, keys) for keys in _CONFIG_PATHS)
    return ModelFiles(directory, config, checkpoint, cmvn, bpe, units)


def read_config(config: Path) -> dict[str, Any]:
    """Parse config.yaml, turning YAML errors into a ModelLoadError."""
    try:
        with config.open() as fin:
            configs = yaml.safe_load(fin)
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"{config} is not readable YAML ({exc}); restore the file.") from exc
    if not isinstance(configs, dict):
        raise ModelLoadError(f"{config} does not hold a mapping; restore the model's config.")
    return configs


def _pick_checkpoint(directory: Path, name: str | None) -> Path:
    if name is not None:
        path = directory / name
        if not path.is_file():
            raise ModelLoadError(f"Checkpoint {path} does not exist; fix checkpoint_name.")
        return path
    found = sorted(directory.glob("*.pt"))
    if not found:
        raise ModelLoadError(f"No *.pt checkpoint in {directory}; copy the model's weights there.")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelLoadError(
            f"{directory} holds several checkpoints ({names}); name one with checkpoint_name."
        )
    return found[0]


def _config_path(directory: Path, configs: dict[str, Any], keys: tuple[str, str]) -> Path:
    section, key = keys
    value = (configs.get(section) or {}).get(key)
    if not value:
        raise ModelLoadError(f"config.yaml has no {section}.{key}; the model folder is incomplete.")
    candidate = Path(value)
    if not candidate.is_absolute():
        candidate = directory / candidate
    if not candidate.is_file():
        # Hub snapshots and copied folders keep the file next to config.yaml even when
        # the config names a training-time path: fall back to the bare file name.
        beside = directory / Path(value).name
        if beside.is_file():
            return beside
        raise ModelLoadError(
            f"{section}.{key} points to {value!r}, which is not in {directory}; copy the "
            "file there or fix config.yaml."
        )
    return candidate


def resolve_config_paths(directory: Path, configs: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``configs`` whose file entries are absolute paths inside ``directory``.

    wenet opens these paths relative to its working directory; every builder of a model
    (the loader, the model-making scripts) pins them here, the same way.
    """
    resolved = copy.deepcopy(configs)
    for section, key in _CONFIG_PATHS:
        resolved[section][key] = str(_config_path(directory, configs, (section, key)))
    return resolved


def wenet_configs(files: ModelFiles) -> dict[str, Any]:
    """The config dict wenet's ``init_model`` expects, with our explicit absolute paths."""
    return resolve_config_paths(files.directory, read_config(files.config))


def init_args() -> SimpleNamespace:
    """Arguments object for wenet's ``init_model`` that makes it build, not load, weights."""
    return SimpleNamespace(jit=False, checkpoint=None, enc_init=None)
