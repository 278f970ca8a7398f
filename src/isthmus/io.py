"""Run directories: `model.safetensors` + `config.json` + `metrics.json`, written atomically.

Nothing is ever unpickled: weights are safetensors; a plain PyTorch state-dict file is imported with
`torch.load(weights_only=True)` only. Every file read is validated and a problem names the file, the
field and the fix (docs/definitions.md gives the layouts).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from .errors import IsthmusError
from .models import ModelConfig, build_model
from .params import Params, check_compatible
from .version import __version__

MODEL_FILE, CONFIG_FILE, METRICS_FILE = "model.safetensors", "config.json", "metrics.json"
SNAPSHOT_DIR = "snapshots"  # RUN/snapshots/epoch_NNNN.safetensors: the weights along training


# ----------------------------------------------------------------------------- atomic writes

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any):
    if isinstance(o, Tensor):
        return o.tolist()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise IsthmusError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IsthmusError(f"{path}: not valid JSON ({e}); rewrite or delete the file") from None
    if not isinstance(obj, dict):
        raise IsthmusError(f"{path}: expected a JSON object at top level, got {type(obj).__name__}")
    return obj


def same_settings(old: dict, new: dict, approx: Sequence[str] = (), rel: float = 1e-9) -> bool:
    """Whether a checkpoint's settings `old` match the current `new`: exactly (after a JSON round
    trip), except the `approx` entries (numbers, or lists of them, computed from the nets: they
    agree only to round-off between processes)."""
    new = json.loads(json.dumps(new))
    if set(old) != set(new):
        return False
    for k, v in new.items():
        if k not in approx:
            if old[k] != v:
                return False
            continue
        try:
            a, b = np.asarray(old[k], dtype=np.float64), np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            return False
        if a.shape != b.shape or not np.allclose(a, b, rtol=rel, atol=1e-12):
            return False
    return True


def check_resume(
    path: str | Path,
    saved: dict | None,
    meta: dict,
    *,
    what: str,
    approx: Sequence[str] = (),
    rel: float = 1e-9,
) -> None:
    """The one resume check of every resumable command: the checkpoint at `path` must exist
    (`saved` is its recorded settings, None when there is none) and have been written for the
    same settings `meta` (see `same_settings`). Raises IsthmusError naming the file and the fix."""
    if saved is None:
        raise IsthmusError(f"--resume: no {what} checkpoint at {path}; start without --resume")
    if not isinstance(saved, dict) or not same_settings(saved, meta, approx, rel):
        raise IsthmusError(
            f"--resume: {path} was written for another {what} (other inputs or settings); "
            "use the same runs and flags, or a new --out"
        )


def save_tensors(
    path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(data, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise IsthmusError(f"{path}: file not found")
    try:
        tensors = st_load(path.read_bytes())
        # the header's order comes back differently from process to process: sort, so that
        # anything flattened in dict order is laid out (and summed) the same way every time
        return {k: tensors[k] for k in sorted(tensors)}
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise IsthmusError(
            f"{path}: not a valid safetensors file ({e}); the file is corrupt, re-create it"
        ) from None


def load_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header (written by `save_tensors`)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise IsthmusError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise IsthmusError(
            f"{path}: not a valid safetensors file ({e}); the file is corrupt, re-create it"
        ) from None


def import_state_dict(path: str | Path) -> Params:
    """Import a plain PyTorch state-dict file safely (weights_only=True: tensors, no code)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise IsthmusError(f"{path}: file not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises several types for refused/corrupt files
        raise IsthmusError(f"{path}: cannot be read as a weights-only state dict ({e})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise IsthmusError(f"{path}: expected a dict of tensors (a state_dict)")
    return dict(obj)


# ----------------------------------------------------------------------------- run directories


@dataclass(frozen=True)
class Run:
    """A loaded run directory: the module (architecture), its parameters and the raw config."""

    path: Path
    model: nn.Module
    params: Params
    config: dict
    model_config: ModelConfig
    metrics: dict


def run_config(model_cfg: ModelConfig, data: dict, train: dict, seed: int, **extra: Any) -> dict:
    """A run's config.json: the isthmus version, model, data, training settings and seed."""

    cfg = {
        "isthmus_version": __version__,
        "model": model_cfg.to_dict(),
        "data": data,
        "train": train,
        "seed": seed,
    }
    cfg.update(extra)
    return cfg


def save_run(path: str | Path, params: Params, config: dict, metrics: dict | None = None) -> Path:
    """Write a run directory (weights first, config last, each atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / MODEL_FILE, params)
    if metrics is not None:
        write_json(path / METRICS_FILE, metrics)
    write_json(path / CONFIG_FILE, config)
    return path


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load and validate a run directory: config fields, then tensor names and shapes vs the config."""
    path = Path(path)
    if not path.is_dir():
        raise IsthmusError(
            f"{path}: not a run directory (expected a folder with {MODEL_FILE} and {CONFIG_FILE})"
        )
    cfg_path = path / CONFIG_FILE
    config = read_json(cfg_path)
    for key in ("model", "data", "seed"):
        if key not in config:
            raise IsthmusError(
                f"{cfg_path}: missing field {key!r}; re-create the run with `isthmus train`"
            )
    if not isinstance(config["model"], dict):
        raise IsthmusError(f"{cfg_path}: field 'model' must be an object")
    try:
        model_cfg = ModelConfig.from_dict(config["model"], source=str(cfg_path))
    except TypeError as e:
        raise IsthmusError(f"{cfg_path}: bad 'model' field ({e})") from None
    model = build_model(model_cfg)
    expected = model.state_dict()
    tensors = _checked_weights(path / MODEL_FILE, expected, cfg_path)
    model.load_state_dict(tensors)
    model.to(device)
    metrics = read_json(path / METRICS_FILE) if (path / METRICS_FILE).exists() else {}
    params = {k: tensors[k].to(device) for k in expected}  # the module's order, every process
    return Run(path, model, params, config, model_cfg, metrics)


def _checked_weights(file: Path, expected: dict[str, Tensor], cfg_path: Path) -> dict[str, Tensor]:
    """The tensors of `file`, refused unless their names and shapes are the architecture's in
    `cfg_path` (`expected`: the module's state dict) and every value is finite."""
    tensors = load_tensors(file)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise IsthmusError(
            f"{file}: tensors do not match the architecture in {cfg_path} "
            f"(missing {missing[:4]}, unexpected {unexpected[:4]}); the weights belong to another model"
        )
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise IsthmusError(
                f"{file}: tensor {k} has shape {tuple(tensors[k].shape)} but {cfg_path} "
                f"implies {tuple(v.shape)}; the weights belong to another model"
            )
        if not torch.isfinite(tensors[k].float()).all():
            raise IsthmusError(f"{file}: tensor {k} contains NaN or inf")
    return tensors


def load_snapshots(
    path: str | Path, device: str | torch.device = "cpu"
) -> list[tuple[int, Params]]:
    """The snapshots of run directory `path` (`train(..., snapshot_every=E)`) as (epoch, params),
    by epoch; each file validated against the run's architecture as `load_run` validates its
    model.safetensors (a bad one is refused by name, with the fix)."""
    run = load_run(path)
    folder = run.path / SNAPSHOT_DIR
    files = sorted(folder.glob("epoch_*.safetensors")) if folder.is_dir() else []
    if not files:
        raise IsthmusError(
            f"{folder}: the run has no snapshots; train with --snapshots K (snapshot_every=K) "
            "to keep the weights every K epochs"
        )
    expected, cfg_path, out = run.model.state_dict(), run.path / CONFIG_FILE, []
    for f in files:
        epoch = f.name[len("epoch_") : -len(".safetensors")]
        if not epoch.isdigit():
            raise IsthmusError(
                f"{f}: not a snapshot name (epoch_NNNN.safetensors); rename or remove the file"
            )
        try:
            tensors = _checked_weights(f, expected, cfg_path)
        except IsthmusError as e:
            raise IsthmusError(f"{e}; delete the snapshot or re-train the run") from None
        out.append((int(epoch), {k: tensors[k].to(device) for k in expected}))
    return sorted(out, key=lambda t: t[0])


def check_same_architecture(runs: Sequence[Run], names: Sequence[str] | None = None) -> None:
    """The one architecture check of every command that combines runs (connect, tree, surface,
    align): every run must have the first one's model config and tensors. Raises IsthmusError
    naming both runs and the fields that differ."""
    names = [str(r.path) for r in runs] if names is None else [str(n) for n in names]
    first, ma = runs[0], runs[0].model_config.to_dict()
    for run, name in zip(runs[1:], names[1:], strict=True):
        mb = run.model_config.to_dict()
        if ma != mb:
            diff = ", ".join(
                f"model.{k}: {ma[k]!r} vs {mb.get(k)!r}" for k in ma if ma[k] != mb.get(k)
            )
            raise IsthmusError(
                f"{names[0]} and {name} have different architectures ({diff}); only nets of one "
                "architecture can be combined"
            )
        check_compatible(first.params, run.params, (names[0], name))


def load_runs(paths: Sequence[str | Path], device: str | torch.device = "cpu") -> list[Run]:
    """Load run directories of one architecture (`load_run`, then `check_same_architecture`)."""
    runs = [load_run(p, device) for p in paths]
    check_same_architecture(runs, [str(p) for p in paths])
    return runs
