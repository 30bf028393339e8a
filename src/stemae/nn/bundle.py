"""Model bundles: a folder with ``config.json`` and ``weights.safetensors``.

Loading never unpickles anything: the configuration is JSON and the weights
are safetensors, whose SHA-256 is recorded in the configuration so that a
truncated or altered file is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from stemae import __version__
from stemae.data.results import atomic_path
from stemae.errors import InputError

FORMAT_VERSION = 1
CONFIG, WEIGHTS = "config.json", "weights.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundle(path, kind: str, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a bundle folder atomically.

    Parameters
    ----------
    path : folder to create (replaced only once the new bundle is complete)
    kind : model kind, checked on load (e.g. ``"ccstae"``)
    config : JSON-serialisable model configuration and training record
    tensors : named weights
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        meta = {
            "kind": kind,
            "format_version": FORMAT_VERSION,
            "stemae_version": __version__,
            "weights_sha256": _sha256(tmp / WEIGHTS),
            "config": config,
        }
        (tmp / CONFIG).write_text(json.dumps(meta, indent=1))
    return path


def bundle_provenance(path) -> dict:
    """What a results store records of the bundle that made it: its absolute
    path and its weights' SHA-256."""
    path = Path(path)
    meta = json.loads((path / CONFIG).read_text())
    return {"path": str(path.resolve()), "weights_sha256": meta["weights_sha256"]}


def bundle_kind(path) -> str:
    """The kind of the bundle at ``path`` (``"ccstae"``, ``"classical"``, ``"domains"``)."""
    path = Path(path)
    try:
        return json.loads((path / CONFIG).read_text())["kind"]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise InputError(f"{path}: not a stemae model bundle (needs a readable {CONFIG})") from None


def load_bundle(path, kind: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a bundle: ``(config, tensors)``.

    Raises
    ------
    InputError
        Missing files, unreadable JSON, another kind or format version, or
        weights whose checksum does not match (truncated or altered).
    """
    path = Path(path)
    cfg_path, w_path = path / CONFIG, path / WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise InputError(f"{path}: not a stemae model bundle (needs {CONFIG} and {WEIGHTS})")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{cfg_path}: unreadable bundle configuration ({e})") from None
    if kind is not None and meta.get("kind") != kind:
        raise InputError(f"{path}: a {meta.get('kind')!r} bundle, expected {kind!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: bundle format {meta.get('format_version')}, this stemae reads {FORMAT_VERSION}")
    if _sha256(w_path) != meta.get("weights_sha256"):
        raise InputError(f"{w_path}: weights do not match their recorded checksum (truncated or altered)")
    return meta["config"], load_file(str(w_path))
