"""Finding and safely loading checkpoints: plain data only, `torch.load(weights_only=True)`, no fallback."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from tinytransformer.errors import UserError
from tinytransformer.model import build_model


def resolve_checkpoint(path: str | Path, key: str = "ckpt_path") -> Path:
    """A .ckpt file as given, or for a run dir its best checkpoint (else its last.ckpt): the one its
    metrics.json names (the lowest val loss, also with save_top_k > 1), else the newest best*.ckpt."""
    p = Path(path).expanduser()
    if p.is_dir():
        ckpt_dir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        try:  # by name: a run dir moved elsewhere still finds it
            recorded = [ckpt_dir / Path(json.loads((p / "metrics.json").read_text())["best_ckpt_path"]).name]
        except (OSError, ValueError, KeyError, TypeError):
            recorded = []
        best = sorted(ckpt_dir.glob("best*.ckpt"), key=lambda f: f.stat().st_mtime)
        candidates = [f for f in recorded if f.is_file()] or best or sorted(ckpt_dir.glob("last.ckpt"))
        if not candidates:
            raise UserError(f"{key}={path}: no checkpoints in this directory; pass a run dir or a .ckpt file")
        return candidates[-1]
    if not p.exists():
        raise UserError(f"{key}={path}: no such file or directory; pass a run dir or a .ckpt file")
    return p


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """Load a checkpoint's plain data; anything that would need code execution to load is refused."""
    p = resolve_checkpoint(path, key)
    if not zipfile.is_zipfile(p):  # torch.save writes zip archives; anything else is not ours
        raise UserError(
            f"{key}={p}: not a readable checkpoint (truncated or another format); "
            "pass a complete .ckpt written by tinytransformer"
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).splitlines()[0][:160]
        raise UserError(
            f"{key}={p}: refused to load: it holds objects that only unsafe loading could build ({reason}); "
            "use a checkpoint written by tinytransformer"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise UserError(
            f"{key}={p}: not a readable checkpoint (truncated or another format: {str(err).splitlines()[0][:120]}); "
            "pass a complete .ckpt written by tinytransformer"
        ) from None
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model" not in hparams:
        raise UserError(f"{key}={p}: not a tinytransformer checkpoint (no model hyperparameters or weights)")
    if "val_history" not in ckpt or "_target_" not in hparams["model"]:
        raise UserError(
            f"{key}={p}: written by an older version of tinytransformer (no model._target_ or val history); "
            "read it with the version that wrote it, or train a new run (the file was left as it is)"
        )
    ckpt["path"] = str(p)
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a checkpoint (eval mode), rebuilt from its class path and arguments, without Lightning."""
    model = build_model(ckpt["hyper_parameters"]["model"])
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    return model.to(device).eval()
