"""The subspace folder: `subspace.safetensors` (the vertices) and `subspace.json` (the complex, how
it was made and its evaluation), written in that order, each atomically, so a folder with a
subspace.json is complete (format: docs/subspaces.md).

`save_subspace` takes any `SimplicialComplex` (joined, grown or trained from scratch) plus what
made it; `load_subspace` reads it back, checked field by field, without unpickling anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import IsthmusError
from ..io import (
    check_files,
    check_inputs,
    file_sha256,
    inputs_record,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from ..models import ModelConfig, build_model
from ..params import Params
from ..version import __version__
from .complex import SimplicialComplex, vertices_from_tensors
from .evaluate import ComplexEvaluation

TENSORS, MANIFEST = "subspace.safetensors", "subspace.json"
FORMAT = "isthmus-subspace"


def save_subspace(
    folder: str | Path,
    complex: SimplicialComplex,
    evaluation: ComplexEvaluation | None = None,
    *,
    method: str,
    model: dict,
    data: dict | None = None,
    runs: list[str] | None = None,
    fit: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write FOLDER/subspace.safetensors, then FOLDER/subspace.json; returns the json's path.

    method: how the complex was made ("join", "grow", "scratch", ...); model: the ModelConfig
    dict; data: the data spec; runs: the given run folders; fit: settings, seed and history of
    the training; extra: further fields (kept as given). subspace.json also records "inputs"
    (`io.inputs_record` of the runs, which are the fixed vertices in order, and the data) and the
    sha256 of subspace.safetensors ("files"): the two files are refused unless they belong together.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / TENSORS, complex.tensors(), {"format": FORMAT})
    names = list(runs or []) if len(runs or []) == len(complex.fixed) else None
    fixed = [(names[n] if names else f"vertex {i}", i) for n, i in enumerate(complex.fixed)]
    doc = {
        "isthmus_version": __version__,
        "format": FORMAT,
        "method": method,
        "model": model,
        "data": data,
        "runs": list(runs or []),
        "vertices": len(complex.vertices),
        "simplices": [list(s) for s in complex.simplices],
        "dimension": complex.dimension,
        "fixed": list(complex.fixed),
        "penalty": {"volume": complex.volume, "cosine": complex.cosine},
        "fit": fit,
        **(evaluation.to_json() if evaluation is not None else {}),
        **(extra or {}),
        "inputs": inputs_record([(n, complex.vertices[i]) for n, i in fixed], data),
        "files": {TENSORS: file_sha256(folder / TENSORS)},
    }
    write_json(folder / MANIFEST, doc)
    return folder / MANIFEST


@dataclass(frozen=True)
class Subspace:
    """A loaded subspace folder: the architecture, the vertices, the complex and subspace.json."""

    path: Path
    module: nn.Module
    vertices: list[Params]
    complex: SimplicialComplex
    config: dict

    def sample(self, n: int, generator: torch.Generator) -> Params:
        """n members drawn uniformly from the complex, stacked (n, ...)."""
        return self.complex.sample(n, generator)


def _field(doc: dict, name: str, kind: type | tuple, where: Path):
    if name not in doc:
        raise IsthmusError(f"{where}: missing field {name!r}; re-create it with `isthmus subspace`")
    v = doc[name]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise IsthmusError(
            f"{where}: field {name!r} has the wrong type ({type(v).__name__}); "
            "re-create it with `isthmus subspace`"
        )
    return v


def _indices(doc: dict, name: str, where: Path, nested: bool) -> list:
    v = _field(doc, name, list, where)
    rows = v if nested else [v]
    if not all(isinstance(r, list) and all(type(i) is int for i in r) for r in rows):
        raise IsthmusError(
            f"{where}: field {name!r} must be a list of{' lists of' if nested else ''} integers "
            "(vertex indices); re-create it with `isthmus subspace`"
        )
    return v


def load_subspace(folder: str | Path, device: str | torch.device = "cpu") -> Subspace:
    """The subspace written by `save_subspace` (or `isthmus subspace`) into `folder`."""
    folder = Path(folder)
    where = folder / MANIFEST
    if not folder.is_dir() or not where.is_file():
        raise IsthmusError(
            f"{folder}: not a subspace folder (expected {MANIFEST} and {TENSORS}, written by "
            "`isthmus subspace`)"
        )
    doc = read_json(where)
    if not isinstance(doc, dict) or doc.get("format", FORMAT) != FORMAT:
        raise IsthmusError(f"{where}: not a subspace manifest (field 'format' is not {FORMAT!r})")
    check_files(where, doc, [TENSORS], "isthmus subspace")
    mdict = _field(doc, "model", dict, where)
    try:
        mcfg = ModelConfig.from_dict(mdict, source=f"{where} field 'model'")
    except TypeError as e:
        raise IsthmusError(f"{where}: bad field 'model' ({e})") from None
    simplices = _indices(doc, "simplices", where, nested=True)
    fixed = _indices(doc, "fixed", where, nested=False)
    dim = _field(doc, "dimension", int, where)
    pen = _field(doc, "penalty", dict, where)
    module = build_model(mcfg)
    expected = module.state_dict()
    tensors = load_tensors(folder / TENSORS)
    try:
        vertices = vertices_from_tensors(tensors)
    except IsthmusError as e:
        raise IsthmusError(
            f"{folder / TENSORS}: {e}; re-create it with `isthmus subspace`"
        ) from None
    for i, v in enumerate(vertices):
        if set(v) != set(expected):
            diff = sorted(set(v) ^ set(expected))[:4]
            raise IsthmusError(
                f"{folder / TENSORS}: vertex {i} does not match field 'model' of {where} "
                f"(tensors {diff} differ); the files belong to different subspaces"
            )
        for k, t in expected.items():
            if v[k].shape != t.shape or v[k].dtype != t.dtype:
                raise IsthmusError(
                    f"{folder / TENSORS}: vertex{i}.{k} is {tuple(v[k].shape)} {v[k].dtype}, field "
                    f"'model' of {where} implies {tuple(t.shape)} {t.dtype}; re-create the folder"
                )
            if v[k].is_floating_point() and not torch.isfinite(v[k]).all():
                raise IsthmusError(f"{folder / TENSORS}: vertex{i}.{k} contains NaN or inf")
    vertices = [{k: v[k].to(device) for k in expected} for v in vertices]
    try:
        cx = SimplicialComplex(
            vertices,
            simplices,
            fixed,
            volume=float(pen.get("volume", 0.0)),
            cosine=float(pen.get("cosine", 0.0)),
        )
    except (IsthmusError, TypeError, ValueError) as e:
        raise IsthmusError(
            f"{where}: fields 'simplices', 'fixed' or 'penalty' do not describe a complex on the "
            f"{len(vertices)} vertices of {TENSORS} ({e}); re-create it with `isthmus subspace`"
        ) from None
    if cx.dimension != dim:
        raise IsthmusError(
            f"{where}: field 'dimension' is {dim} but the simplices have {cx.dimension + 1} "
            "vertices each; re-create it with `isthmus subspace`"
        )
    # the fixed vertices are the runs it was made from, in order (its "inputs" record)
    check_inputs(where, doc, [(f"fixed vertex {i} of {TENSORS}", vertices[i]) for i in cx.fixed])
    module.load_state_dict(vertices[0])
    module.to(device)
    return Subspace(folder, module, vertices, cx, doc)
