"""Run directories: `model.safetensors` + `config.json` + `metrics.json`, written atomically.

Nothing is ever unpickled: weights are safetensors; a plain PyTorch state-dict file is imported with
`torch.load(weights_only=True)` only. Every file read is validated and a problem names the file, the
field and the fix (docs/definitions.md gives the layouts).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl  # POSIX; elsewhere output folders are not locked
except ImportError:  # pragma: no cover
    fcntl = None
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from .errors import IsthmusError
from .models import ModelConfig, build_model
from .params import Params, check_compatible, fingerprint
from .version import __version__

MODEL_FILE, CONFIG_FILE, METRICS_FILE = "model.safetensors", "config.json", "metrics.json"
SNAPSHOT_DIR = "snapshots"  # RUN/snapshots/epoch_NNNN.safetensors: the weights along training


# ----------------------------------------------------------------------------- atomic writes

_UMASK = os.umask(0)
os.umask(_UMASK)


# Fault injection for the kill tests (tests/test_kill.py): with this variable set to N, the
# process SIGKILLs itself right after its N-th file write, i.e. between any two writes of a run.
CRASH_AFTER_WRITES = "ISTHMUS_CRASH_AFTER_WRITES"
_writes = 0


def _after_write() -> None:
    global _writes
    _writes += 1
    n = os.environ.get(CRASH_AFTER_WRITES)
    if n and _writes == int(n):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise IsthmusError(f"cannot write {path} ({e.strerror}); choose another place") from None
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
    _after_write()


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (RFC 8259), atomically: a non-finite number becomes null and the reason is
    recorded beside it (docs/definitions.md, "Non-finite numbers")."""
    text = json.dumps(strict_json(obj), indent=2, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def _plain(o: Any) -> Any:
    if isinstance(o, Tensor | np.ndarray | np.generic):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    return o


def _nonfinite(v: Any, where: str, found: dict[str, str]) -> Any:
    """v with every non-finite float replaced by None; found[where/index] = "nan"|"inf"|"-inf"."""
    v = _plain(v)
    if isinstance(v, float) and not math.isfinite(v):
        found[where] = "nan" if v != v else ("inf" if v > 0 else "-inf")
        return None
    if isinstance(v, list):
        return [_nonfinite(x, f"{where},{i}" if where else str(i), found) for i, x in enumerate(v)]
    if isinstance(v, dict):
        return strict_json(v)
    return v


def strict_json(obj: Any) -> Any:
    """obj made strictly JSON-serialisable: tensors and arrays as lists, and every NaN/inf as null
    with a sibling "<key>_nonfinite" field saying what it was ("nan", "inf", "-inf"; for a list, a
    map from the comma-joined index to the kind)."""
    obj = _plain(obj)
    if not isinstance(obj, dict):
        return _nonfinite(obj, "", {})
    out: dict = {}
    for k, v in obj.items():
        found: dict[str, str] = {}
        out[str(k)] = _nonfinite(v, "", found)
        if found:
            out[f"{k}_nonfinite"] = found.get("", found)
    return out


_KINDS = ("nan", "inf", "-inf")  # what a "<key>_nonfinite" record may say


def restore_nonfinite(obj: Any) -> Any:
    """The inverse of `strict_json` for readers that need the numbers back: every null with a
    `<key>_nonfinite` record becomes that float again (the records are dropped)."""
    if isinstance(obj, list):
        return [restore_nonfinite(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        if k.endswith("_nonfinite") and k[: -len("_nonfinite")] in obj:
            continue
        rec = obj.get(f"{k}_nonfinite")
        v = restore_nonfinite(v)
        if rec in _KINDS and v is None:
            v = float(rec)
        elif isinstance(rec, dict) and isinstance(v, list):
            for where, kind in rec.items():
                try:  # a malformed record (hand-edited) restores nothing: the null stays
                    idx = [int(i) for i in str(where).split(",")]
                    target = v
                    for i in idx[:-1]:
                        target = target[i]
                    if kind in _KINDS and target[idx[-1]] is None:
                        target[idx[-1]] = float(kind)
                except (ValueError, IndexError, TypeError, KeyError):
                    continue
        out[k] = v
    return out


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON (write null instead)")


def read_json(path: str | Path) -> dict:
    """A JSON object from `path`, strictly: NaN and Infinity tokens are refused."""
    path = Path(path)
    if not path.is_file():
        raise IsthmusError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
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


def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], state: dict) -> None:
    """One checkpoint file: the tensors, and `state` (strict JSON: counters, history, settings) in
    the safetensors header. One atomic write, so a kill can never leave the tensors of one epoch
    beside the counter of another."""
    text = json.dumps(strict_json(state), allow_nan=False)
    save_tensors(path, tensors, metadata={"isthmus_state": text})


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """(tensors, state) written by `save_checkpoint`, or a clear error naming the file."""
    meta = load_metadata(path)
    try:
        state = json.loads(meta["isthmus_state"], parse_constant=_refuse_constant)
    except (KeyError, ValueError):
        raise IsthmusError(
            f"{path}: not an isthmus checkpoint (no valid state in its header); delete it and "
            "start without --resume"
        ) from None
    if not isinstance(state, dict):
        raise IsthmusError(f"{path}: checkpoint state must be a JSON object; delete the file")
    return load_tensors(path), state


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


# ----------------------------------------------------------------------------- input identity


def inputs_record(
    runs: Sequence[tuple[str | Path, Params]],
    data: dict | None = None,
    results: Sequence[tuple[str | Path, str]] = (),
) -> dict:
    """The "inputs" field of a result file: each input run's path and the sha256 of its weights
    (`params.fingerprint`), and the data set, so that a consumer can refuse a result of other nets;
    `results` adds (folder, sha256) of input results that are not runs (a path, a subspace)."""
    rec: dict = {
        "runs": [{"path": str(p), "sha256": fingerprint(params)} for p, params in runs],
        "data": data,
    }
    if results:
        rec["results"] = [{"path": str(p), "sha256": h} for p, h in results]
    return rec


def check_inputs(path: str | Path, doc: dict, runs: Sequence[tuple[str | Path, Params]]) -> None:
    """Refuse the result file `path` (its JSON `doc`) unless its "inputs" record names exactly the
    weights of `runs` (in order), with a message naming the file, the field, the run and the fix."""
    rec = doc.get("inputs")
    got = rec.get("runs") if isinstance(rec, dict) else None
    if not isinstance(got, list) or len(got) != len(runs):
        raise IsthmusError(
            f"{path}: no field 'inputs' recording {len(runs)} run(s) (written by an older isthmus "
            "or edited); re-create it with the current version of the command that wrote it"
        )
    for n, (want, entry) in enumerate(zip(runs, got, strict=True)):
        name, params = want
        if not isinstance(entry, dict) or entry.get("sha256") != fingerprint(params):
            made = entry.get("path") if isinstance(entry, dict) else "?"
            raise IsthmusError(
                f"{path}: was computed for other weights ({made}) than those of {name} (field "
                f"'inputs.runs[{n}].sha256'); give the result computed for {name}, or re-create it"
            )


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (the "files" record of a result folder)."""
    path = Path(path)
    if not path.is_file():
        raise IsthmusError(f"{path}: file not found")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_files(path: str | Path, doc: dict, names: Sequence[str], command: str) -> None:
    """Refuse the result file `path` (its JSON `doc`, written last) unless its "files" record gives
    the sha256 of each of `names` (files beside it) and they still have it: a tensors file of
    another result, or one changed by hand, is refused before it is read. `command` re-creates it."""
    path = Path(path)
    rec = doc.get("files")
    for name in names:
        want = rec.get(name) if isinstance(rec, dict) else None
        if not isinstance(want, str):
            raise IsthmusError(
                f"{path}: no field 'files' with the sha256 of {name} (written by an older "
                f"isthmus or edited); re-create the folder with `{command}`"
            )
        if file_sha256(path.parent / name) != want:
            raise IsthmusError(
                f"{path.parent / name}: its sha256 differs from field 'files' of {path}: the file "
                f"was changed or belongs to another result; re-create the folder with `{command}`"
            )


# ----------------------------------------------------------------------------- output folders

LOCK_FILE = ".isthmus.lock"
_held: dict[
    Path, Any
] = {}  # output folder -> its open, locked lock file (released with the process)


def claim_output(
    path: str | Path,
    inputs: Sequence[str | Path] = (),
    *,
    resume: bool = False,
    overwrite: bool = False,
    adds: bool = False,
) -> Path:
    """Make `path` this process's output folder, or fail with a message that says how to fix it.

    Refused: a path that is a file, lies inside an input or is one; an existing non-empty folder
    unless `resume` (continue its checkpoint), `overwrite` (write over its files) or `adds` (the
    command only adds files of its own, as eval and the demo do); a folder another process is
    writing to (an OS lock held for the life of the process: a killed run releases it, so it can
    be resumed). Returns the folder, created with its parents."""
    out = Path(path)
    for x in inputs:
        r = Path(x).resolve()
        if out.resolve() == r or r in out.resolve().parents:
            raise IsthmusError(
                f"--out {out} is the input run {x} or lies inside it; choose a new directory"
            )
    if out.exists() and not out.is_dir():
        raise IsthmusError(f"--out {out} is a file; give a directory")
    if out.is_dir() and not (resume or overwrite or adds):
        if any(p.name != LOCK_FILE for p in out.iterdir()):
            raise IsthmusError(
                f"--out {out} exists and is not empty; pass --resume to continue its run "
                "(where the command offers it), --overwrite to write over it, or choose a new --out"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a+")  # noqa: SIM115 - held open while the process runs
    except OSError as e:
        raise IsthmusError(
            f"--out {out}: cannot write there ({e.strerror}); choose another place"
        ) from None
    try:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise IsthmusError(
            f"--out {out}: another isthmus process is writing there; wait for it to finish or "
            "choose another --out"
        ) from None
    release_output(out)
    _held[out.resolve()] = handle
    return out


def held_outputs() -> list[Path]:
    """The output folders this process holds (claimed by `claim_output`, not yet released)."""
    return list(_held)


def release_output(path: str | Path | None = None) -> None:
    """Release the lock of one output folder (all of them with None): the CLI does this when a
    command ends; a process that dies releases them by itself."""
    keys = list(_held) if path is None else [Path(path).resolve()]
    for k in keys:
        h = _held.pop(k, None)
        if h is not None:
            h.close()


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
    data = config["data"]
    if not (
        isinstance(data, dict)
        and isinstance(data.get("name", ""), str)
        and isinstance(data.get("root"), str | None)
        and isinstance(data.get("seed", 0), int)
    ):
        raise IsthmusError(
            f"{cfg_path}: field 'data' must be an object {{name: str, root: str or null, seed: "
            f"int}}, got {data!r}; re-create the run with `isthmus train`"
        )
    if not isinstance(config["seed"], int) or isinstance(config["seed"], bool):
        raise IsthmusError(f"{cfg_path}: field 'seed' must be an integer, got {config['seed']!r}")
    if "train" in config and not isinstance(config["train"], dict):
        raise IsthmusError(f"{cfg_path}: field 'train' must be an object")
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
        if tensors[k].dtype != v.dtype:
            raise IsthmusError(
                f"{file}: tensor {k} has dtype {tensors[k].dtype} but the model needs {v.dtype}; "
                "re-create the weights with `isthmus train` or convert them"
            )
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
