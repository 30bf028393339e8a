"""The models a server holds: a repository folder laid out like Triton's,
``REPO/NAME/VERSION/`` each holding a stemae bundle of any kind, and for each
bundle its per-batch step with one named, typed input and named, typed
outputs (the Open Inference Protocol's model metadata).

Models come only from bundles in the repository folder (safetensors weights
and a JSON config, checked by :func:`stemae.nn.bundle.load_bundle`), never
from URLs or pickles.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stemae.errors import InputError
from stemae.strain.lattice import STRAIN_COMPONENTS

#: Names a model or a version may have: no path separators, no dot first.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: The protocol's datatypes and their little-endian NumPy types (BYTES is not served).
DATATYPES = {"BOOL": "|b1", "UINT8": "|u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "|i1",
             "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}

@dataclass(frozen=True)
class TensorSpec:
    """A named tensor of a model: ``shape`` with -1 for the batch axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    description: str = ""

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class Model:
    """One served version of a bundle: its input and outputs, and ``infer``,
    a batch ``(B, ...)`` of the input to ``{output name: (B, ...) array}``."""

    name: str
    version: str
    kind: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    infer: Callable[[np.ndarray], dict[str, np.ndarray]]
    parameters: dict = field(default_factory=dict)

    def metadata(self, versions: list[str]) -> dict:
        return {"name": self.name, "versions": versions, "platform": f"stemae_{self.kind}",
                "inputs": [t.metadata() for t in self.inputs], "outputs": [t.metadata() for t in self.outputs],
                "parameters": self.parameters}

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self.infer(x)
        return {t.name: np.ascontiguousarray(out[t.name], DATATYPES[t.datatype]) for t in self.outputs}


def _strain_outputs(step, K: int | None) -> list[TensorSpec]:
    """The outputs of a strain step's model (``K`` phases for a CC-ST-AE)."""
    spec = step.results()
    out = [TensorSpec("G", "FP32", (-1, 2, 2), "local reciprocal basis, px, columns g1 g2"),
           TensorSpec("cov", "FP32", (-1, 4, 4), "covariance of G's row-major entries, px^2"),
           TensorSpec("origin", "FP32", (-1, 2), "central beam (x, y), px"),
           TensorSpec("transform", "FP32", (-1, 2, 2), "deformation gradient F onto the reference, a = F a_ref"),
           TensorSpec("strain", "FP32", (-1, 4), "e_xx, e_yy, e_xy (1) and theta (deg) against the reference"),
           TensorSpec("strain_std", "FP32", (-1, 4), "standard deviations of strain"),
           TensorSpec("valid", "BOOL", (-1,), "at least three disks and a finite fit"),
           TensorSpec("n_disks", "INT64", (-1,), "Bragg disks fitted")]
    if K is not None:
        J = spec["disk_intensity"][0][0]
        out += [TensorSpec("phase", "INT64", (-1,), "phase index"),
                TensorSpec("probabilities", "FP32", (-1, K), "phase probabilities"),
                TensorSpec("chi2", "FP32", (-1,), "Pearson chi-square per degree of freedom"),
                TensorSpec("disk_intensity", "FP32", (-1, J), "integrated counts per reflection"),
                TensorSpec("background", "FP32", (-1,), "diffuse background, counts/px")]
    else:
        out += [TensorSpec("rms", "FP32", (-1,), "rms misfit of the lattice to the disks, px")]
    return out


def strain_model(name: str, version: str, path: Path, device: str = "cpu") -> Model:
    """A strain bundle (CC-ST-AE or classical) as a model: patterns
    ``(B, Qy, Qx)`` FP32 counts to lattices and strain against the bundle's
    own reference (the CC-ST-AE's learned base lattice of each pattern's
    phase; the classical state's reference basis)."""
    from stemae.strain.ccstae import PredictStep
    from stemae.strain.lattice import strain_against
    from stemae.strain.run import load_step

    step = load_step(path, device=device)
    if isinstance(step, PredictStep):
        bases, K, shape, kind = step.model.G.detach().cpu().double().numpy(), step.model.K, step.model.pattern_shape, "ccstae"
    else:
        bases, K, shape, kind = step.state["basis"][None].astype(np.float64), None, step.pattern_shape, "classical"

    def infer(patterns: np.ndarray) -> dict[str, np.ndarray]:
        r = step(patterns)
        phase = np.asarray(r["phase"], np.int64) if K is not None else np.zeros(len(patterns), np.int64)
        out = {**r, **strain_against(r["G"], r["cov"], bases, phase)}
        out["valid"] = np.isfinite(out["strain"]).all(-1) & (r["n_disks"] >= 3)
        if "valid" in r:
            out["valid"] &= r["valid"]
        return out

    return Model(name, version, kind, [TensorSpec("patterns", "FP32", (-1, *shape), "diffraction patterns, counts")],
                 _strain_outputs(step, K), infer,
                 {"reference_bases_px": bases.tolist(), "strain_components": list(STRAIN_COMPONENTS)})


def domains_model(name: str, version: str, path: Path, device: str = "cpu") -> Model:
    """A domains bundle as a model: image windows ``(B, W, W)`` FP32 (the
    bundle's window side) to what the map step gives each window
    (:class:`stemae.domains.run.FrameStep`): content latents, pose, stripe
    order, wall angle and period, and with the bundle's types each window's
    type (before the whole-map refinement of walls). The windows come
    without their grid, so order and type are each window's own: the map
    step's pooling of faint windows over their grid neighbours
    (:func:`stemae.domains.windows.pooled_order`) is left out."""
    import torch

    from stemae.domains import model as ae
    from stemae.domains.run import ORDER_THRESHOLD
    from stemae.domains.segment import assign_types
    from stemae.domains.windows import hann, lines_are_not_stripes, spectra_of_windows, window_stripes

    model, cfg = ae.load_model(path, device)
    window, crop, types = int(cfg["window"]), int(cfg["crop"]), cfg.get("type_angles")
    taper = hann(window)

    def infer(windows: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            spectra = spectra_of_windows(torch.as_tensor(np.require(windows, np.float32)), taper, crop).numpy()
        coded = ae.predict(model, spectra, window, device=device)
        out = {**coded, **window_stripes(spectra, window)}
        out["order"] = lines_are_not_stripes(out["order"], out["period"], window)
        if types is not None:
            out["label"] = assign_types(out["order"], out["orientation"], ORDER_THRESHOLD, types)
        return out

    outputs = [TensorSpec("content", "FP32", (-1, model.latent), "content latents"),
               *(TensorSpec(k, "FP32", (-1,), d) for k, d in (
                   ("stretch", "pose stretch"), ("shear", "pose shear"), ("error", "reconstruction error"),
                   ("order", "stripe order over the noise-only threshold"), ("orientation", "wall angle, deg"),
                   ("period", "stripe period, px")))]
    if types is not None:
        outputs.append(TensorSpec("label", "INT64", (-1,), "domain type, 0 domain-free"))
    return Model(name, version, "domains", [TensorSpec("windows", "FP32", (-1, window, window), "image windows")],
                 outputs, infer, {"type_angles": types, "window": window})


def repository_layout(repository) -> list[tuple[str, str, Path, str]]:
    """The bundles of a model repository, ``(name, version, folder, kind)``
    in order, without loading them.

    Raises
    ------
    InputError
        The folder is missing or holds no bundle, a name is not a plain
        name, or a version folder holds no readable bundle.
    """
    from stemae.nn.bundle import bundle_kind

    repo = Path(repository)
    if not repo.is_dir():
        raise InputError(f"{repo}: no such model repository folder")
    out = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not (NAME.match(model_dir.name) and NAME.match(version_dir.name)):
                raise InputError(f"{version_dir}: model names and versions are letters, digits, '_', '.' and '-'")
            out.append((model_dir.name, version_dir.name, version_dir, bundle_kind(version_dir)))
    if not out:
        raise InputError(f"{repo}: no models; lay it out as {repo}/NAME/VERSION/ each holding a stemae bundle")
    return out


def load_repository(repository, device: str = "cpu") -> dict[str, dict[str, Model]]:
    """Every bundle of a model repository (:func:`repository_layout`) loaded,
    ``{name: {version: Model}}``."""
    models: dict[str, dict[str, Model]] = {}
    for name, version, path, kind in repository_layout(repository):
        load = domains_model if kind == "domains" else strain_model
        models.setdefault(name, {})[version] = load(name, version, path, device)
    return models
