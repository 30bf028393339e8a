"""Run a strain mapping on a datacube and write its results store and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemae import __version__
from stemae.data import Datacube, write_results
from stemae.data.readers import lazy
from stemae.errors import InputError
from stemae.conventions import CONVENTIONS, STRAIN_ARRAYS
from stemae.geometry import frame_matrix, reference_mask
from stemae.nn.bundle import CONFIG, bundle_provenance, load_bundle
from stemae.nn.device import resolve_device
from stemae.runner import partial_status, remove_partial
from stemae.strain import ccstae
from stemae.strain.classical import CLASSICAL_METHODS, fit_state, map_strain, save_state
from stemae.strain.diagnostics import bragg_vector_map
from stemae.data.blocks import read_patterns
from stemae.strain.pooled import aligned_sum
from stemae.viz import (
    plot_bases,
    plot_diagnostics,
    plot_lattice,
    plot_loss,
    plot_phase_map,
    plot_strain_maps,
    plot_uncertainty_maps,
    plot_virtual_dark_field,
)

METHODS = ("ccstae", *CLASSICAL_METHODS)
#: The partial store of a run in progress (see :mod:`stemae.runner`), in its output folder.
PARTIAL = ".strain.partial.zarr"
#: Every figure a strain run may write; those a run does not write are
#: removed from its folder, so no figure of an earlier run stays beside
#: new results.
FIGURES = ("strain_maps.png", "diagnostics.png", "uncertainty_maps.png", "reference_lattice.png", "phase_map.png",
           "bases.png", "virtual_dark_field.png", "loss.png")

def train_model(datacube: Datacube, *, classes: int = 1, epochs: int = 3, refine: str = "voigt", seed: int = 0,
                device: str = "cpu", progress: bool = False):
    """Fit a CC-ST-AE on a datacube; returns ``(model, record)``."""
    return ccstae.fit(datacube.data, n_classes=classes, epochs=epochs, profile=refine, seed=seed,
                      device=resolve_device(device), progress=progress)


def load_step(bundle, *, device: str = "cpu", batch_size: int = 256):
    """The per-batch step (see :mod:`stemae.runner`) of a strain bundle: a
    trained CC-ST-AE's :class:`~stemae.strain.ccstae.PredictStep` or a
    classical state's :class:`~stemae.strain.classical.ClassicalStep`."""
    from stemae.nn.bundle import bundle_kind
    from stemae.strain import classical

    if bundle_kind(bundle) == classical.KIND:
        return classical.ClassicalStep(*classical.load_state(bundle))
    return ccstae.PredictStep(ccstae.load(bundle), device=resolve_device(device), batch_size=batch_size)


def _mapping(datacube: Datacube, out_dir, bundle: dict | None, client, rows: int | None) -> dict:
    """How the per-batch step runs (:func:`stemae.runner.run`): on the
    ``client``'s workers (which open the file themselves) or in process, in
    blocks of ``rows`` scan rows, resumable from ``out_dir``'s partial store
    when the step's state is a saved ``bundle`` (its provenance identifies
    the run)."""
    out = {"data": lazy(datacube) if client is not None else datacube.data, "client": client, "rows": rows}
    if bundle is not None:
        out.update(store=Path(out_dir) / PARTIAL, fingerprint=_fingerprint(datacube, bundle))
    return out


def _fingerprint(datacube: Datacube, bundle: dict) -> dict:
    """What identifies a mapping run: the input, its shape, the bundle's
    weights (:func:`~stemae.nn.bundle.bundle_provenance`) and the version."""
    return {"input": datacube.source, "shape": list(datacube.data.shape), "bundle": bundle["weights_sha256"],
            "stemae_version": __version__}


def predict_strain(model, datacube: Datacube, out_dir, *, reference=None, reference_phase: int | None = None,
                   per_phase: bool = False, frame: dict | None = None, device: str = "cpu", progress: bool = False,
                   record: dict | None = None, bundle: dict | None = None, client=None, rows: int | None = None,
                   compile: bool | None = None) -> dict:
    """Map strain and phase with a trained CC-ST-AE and write the results
    (``bundle``: :func:`~stemae.nn.bundle.bundle_provenance` of the model's
    bundle, recorded in the store; with it the mapping resumes from the
    blocks an interrupted run kept; ``client``: a ``dask.distributed.Client``
    to map on; ``rows``: scan rows per block; ``compile``: the fits through
    ``torch.compile``, see :func:`~stemae.strain.ccstae.predict`)."""
    _check_phase(reference_phase, model.K, per_phase)
    how = _mapping(datacube, out_dir, bundle, client, rows)
    pred = ccstae.predict(model, how.pop("data"), device=resolve_device(device), progress=progress, compile=compile,
                          **how)
    res = ccstae.to_strain(pred, reference, reference_phase=reference_phase, frame=_frame(frame, datacube.calibration),
                            per_phase=per_phase)
    res["bases"] = model.G.detach().cpu().numpy()
    res["hk"] = model.hk.cpu().numpy().astype(np.int16)
    res["radius"] = model.radius
    res["method"] = "ccstae"
    if record is not None:
        res["loss"] = np.asarray(record["loss"], dtype=np.float32)
    out_dir = Path(out_dir)
    written = write_strain_results(datacube, out_dir, res,
                                   extra_attrs={"training": record or {}, "disk_profile": model.profile,
                                                "strain_frame": _frame_attrs(frame),
                                                **({"phase_references": res["phase_references"]} if per_phase else {}),
                                                **({"bundle": bundle} if bundle else {})})
    written += [plot_phase_map(res["phase"], res["probabilities"], out_dir / "phase_map.png",
                               phase_names(res["bases"], datacube.calibration)),
                plot_bases(res["bases"], res["hk"], res["radius"], datacube.pattern_shape,
                           model.center.cpu().numpy(), out_dir / "bases.png"),
                plot_virtual_dark_field(res["disk_intensity"], res["hk"], out_dir / "virtual_dark_field.png")]
    if record is not None and record["loss"]:
        written.append(plot_loss(record["loss"], out_dir / "loss.png"))
    clear_stale_figures(out_dir, written)
    remove_partial(out_dir / PARTIAL)
    return res


def predict_classical(state: dict, datacube: Datacube, out_dir, *, reference=None, frame: dict | None = None,
                      progress: bool = False, bundle: dict | None = None, client=None, rows: int | None = None
                      ) -> dict:
    """Map strain with a classical state (:func:`~stemae.strain.classical.fit_state`)
    and write the results (``bundle``, ``client``, ``rows``: as :func:`predict_strain`)."""
    how = _mapping(datacube, out_dir, bundle, client, rows)
    res = map_strain(how.pop("data"), reference=reference, frame=_frame(frame, datacube.calibration), state=state,
                     progress=progress, **how)
    clear_stale_figures(out_dir, write_strain_results(
        datacube, out_dir, res, extra_attrs={"strain_frame": _frame_attrs(frame),
                                             **({"bundle": bundle} if bundle else {})}))
    remove_partial(Path(out_dir) / PARTIAL)
    return res


def _resumable_model(out_dir: Path, datacube: Datacube, settings: dict):
    """The bundle an interrupted run in ``out_dir`` was mapping this data
    with (its path and training record), if its partial store is still
    there and the bundle was trained with these ``settings`` (keys of the
    training record); else None."""
    path = out_dir / "model"
    if partial_status(out_dir / PARTIAL) is None or not (path / CONFIG).is_file():
        return None
    import zarr

    seen = zarr.open_group(str(out_dir / PARTIAL), mode="r").attrs.get("fingerprint")
    record = load_bundle(path, ccstae.KIND)[0]["training"]
    same = (seen == _fingerprint(datacube, bundle_provenance(path))
            and all(record.get(k) == v for k, v in settings.items()))
    return (path, record) if same else None


def run_strain(datacube: Datacube, out_dir, *, method: str = "ccstae", reference=None,
               reference_phase: int | None = None, per_phase: bool = False, frame: dict | None = None,
               classes: int = 1, epochs: int = 3, refine: str = "voigt", seed: int = 0, device: str = "cpu",
               progress: bool = False, client=None, rows: int | None = None, compile: bool | None = None) -> dict:
    """Map strain (and phase, for ``ccstae``); write ``out_dir/strain.zarr``,
    figures and the method's bundle ``out_dir/model`` (the trained CC-ST-AE,
    or the classical methods' fitted state), which ``stemae predict`` maps
    other scans with.

    Parameters
    ----------
    datacube : Datacube
    out_dir : directory for ``strain.zarr`` and the PNG figures
    method : ``"ccstae"`` (trains on the data), ``"xcorr"`` or ``"com"``
    reference : None, bool mask (Ry, Rx) or ((r0, r1), (c0, c1)); it must
        hold one lattice (two phases or grains in it are refused)
    reference_phase : ``ccstae`` only: the reference is this phase's
        positions in ``reference`` (the whole scan by default)
    per_phase : ``ccstae`` only: every phase's strain against its own
        positions in ``reference`` (or over the whole scan where it has none
        there); the store's ``phase_references`` gives each phase's
        reference and its mismatch to the first
    frame : axes of the strain maps: ``{"strain_axis": deg, "scan_rotation":
        deg, "flip": bool}`` (:func:`~stemae.geometry.frame_matrix`);
        detector axes by default
    classes, epochs, refine, seed, device : CC-ST-AE settings (``refine``: the
        disk profiles, ``"voigt"`` or ``"template"``)
    progress : bool
    client : a ``dask.distributed.Client`` to map on (training stays in process)
    rows : scan rows per block (default about 32 MB of patterns)
    compile : ``ccstae`` only: map through ``torch.compile`` (see
        :func:`~stemae.strain.ccstae.predict`; default from 100,000 patterns)

    A run that was interrupted (its partial store ``out_dir/.strain.partial.zarr``
    kept) continues where it stopped when started again on the same data:
    the CC-ST-AE is not trained again, the blocks already mapped are not
    mapped again, and the results equal an uninterrupted run's.

    Returns
    -------
    The result dict (maps and metadata).
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method != "ccstae" and (reference_phase is not None or per_phase):
        raise InputError(f"a reference by phase needs the phases ccstae learns; {method} has none (give --reference)")
    out_dir = Path(out_dir)
    reference_mask(datacube.scan_shape, reference)  # a region outside the scan is refused before any work
    if method == "ccstae":
        _check_phase(reference_phase, classes, per_phase)
        kept = _resumable_model(out_dir, datacube, {"n_classes": classes, "epochs": epochs, "profile": refine,
                                                     "seed": seed})
        if kept is not None:
            path, record = kept
            model = ccstae.load(path, profile=refine)
        else:
            model, record = train_model(datacube, classes=classes, epochs=epochs, refine=refine, seed=seed,
                                        device=device, progress=progress)
            path = ccstae.save(model, out_dir / "model", record)
        return predict_strain(model, datacube, out_dir, reference=reference, reference_phase=reference_phase,
                              per_phase=per_phase, frame=frame, device=device, progress=progress, record=record,
                              bundle=bundle_provenance(path), client=client, rows=rows, compile=compile)
    state = fit_state(datacube.data, method=method, reference=reference)
    path = save_state(state, out_dir / "model", datacube.pattern_shape)
    return predict_classical(state, datacube, out_dir, reference=reference, frame=frame, progress=progress,
                             bundle=bundle_provenance(path), client=client, rows=rows)


def phase_names(bases: np.ndarray, calibration) -> list[str]:
    """A label per learned base (K, 2, 2): its two plane spacings in
    angstrom when the detector is calibrated
    (:meth:`~stemae.data.calibration.Calibration.lattice`), else |g| in px."""
    names = []
    for k, G in enumerate(bases):
        lat = calibration.lattice(G)
        a, b = np.linalg.norm(G, axis=0)
        names.append(f"{k}: d {lat['d1_A']:.3f}, {lat['d2_A']:.3f} A" if lat else f"{k}: |g| {a:.2f}, {b:.2f} px")
    return names


def _frame_attrs(frame: dict | None) -> dict:
    """The axes the strain maps are in, as the store records them."""
    return {"strain_axis": 0.0, "scan_rotation": 0.0, "flip": False, **(frame or {})}


def _frame(frame: dict | None, calibration) -> np.ndarray | None:
    """The map from detector vectors to the strain maps' axes: the
    detector's elliptical distortion removed, then
    :func:`~stemae.geometry.frame_matrix` of ``frame``; None for detector
    axes as they are."""
    M = (frame_matrix(**frame) if frame else np.eye(2)) @ calibration.undistortion()
    return None if np.allclose(M, np.eye(2)) else M


def _check_phase(reference_phase: int | None, classes: int, per_phase: bool) -> None:
    """Refuse a reference phase the model does not have, before any work."""
    if per_phase and reference_phase is not None:
        raise InputError("a reference phase and a reference per phase exclude each other")
    if reference_phase is not None and not 0 <= reference_phase < classes:
        raise InputError(f"reference phase {reference_phase} does not exist: the model has {classes} phase(s), "
                         f"0 to {classes - 1}")


def clear_stale_figures(out_dir, written) -> None:
    """Remove the :data:`FIGURES` in ``out_dir`` that this run did not write."""
    keep = {Path(p).name for p in written}
    for name in FIGURES:
        if name not in keep:
            (Path(out_dir) / name).unlink(missing_ok=True)


def write_strain_results(datacube: Datacube, out_dir, res: dict, extra_attrs: dict | None = None) -> list[Path]:
    """``strain.zarr`` (maps with units and descriptions, conventions and
    metadata as attributes), ``strain_maps.png``, ``uncertainty_maps.png``
    (where the method gives uncertainties) and ``reference_lattice.png``;
    returns the figures' paths."""
    out_dir = Path(out_dir)
    mask = res["reference"]
    G = np.stack([res["g1"], res["g2"]], -1)
    res = {**res, "bragg_vector_map": bragg_vector_map(G, res["valid"], datacube.pattern_shape)}
    cal = datacube.calibration
    lattice = cal.lattice(res["g_ref"])
    if lattice:
        to_q = cal.undistortion() * cal.inverse_angstrom_per_pixel()
        res = {**res, "g1_inv_A": (res["g1"] @ to_q.T).astype(np.float32),
               "g2_inv_A": (res["g2"] @ to_q.T).astype(np.float32)}
    arrays = {k: (res[k], *STRAIN_ARRAYS[k]) for k in STRAIN_ARRAYS if k in res}
    attrs = {
        "conventions": CONVENTIONS,
        "method": res["method"],
        "reference_basis_px": res["g_ref"],
        **({"reference_lattice": lattice} if lattice else {}),
        "disk_radius_px": res["radius"],
        "calibration": datacube.calibration.to_attrs(),
        "source": datacube.source,
        "scan_shape": list(datacube.scan_shape),
        "pattern_shape": list(datacube.pattern_shape),
        **({"indexing": res["indexing"]} if "indexing" in res else {}),
        **(extra_attrs or {}),
    }
    write_results(out_dir / "strain.zarr", arrays, attrs)
    step = (cal.r_pixel_size, cal.r_units or "") if cal.r_pixel_size else None
    written = [plot_strain_maps(res, out_dir / "strain_maps.png", res["valid"], title=f"strain ({res['method']})",
                                scan_step=step),
               plot_diagnostics(res, out_dir / "diagnostics.png", res.get("com"), scan_step=step)]
    if "sigma_e_xx" in res:
        written.append(plot_uncertainty_maps(res, out_dir / "uncertainty_maps.png", res["valid"], scan_step=step))
    cells = np.argwhere(mask & res["valid"])
    if len(cells):
        # The reference lattice on the region's patterns summed on their
        # central beams: the disks show there at any dose.
        cells = cells[np.random.default_rng(0).permutation(len(cells))[:256]]
        patterns = read_patterns(datacube.data, cells[:, 0], cells[:, 1])
        origins = res["origin"][cells[:, 0], cells[:, 1]].astype(np.float64)
        target = np.round(np.median(origins, 0))
        total = aligned_sum(patterns, origins, target)
        shift = np.median(origins - np.round(origins), 0)
        written.append(plot_lattice(total, target + shift, res["g_ref"], res["radius"],
                                    out_dir / "reference_lattice.png",
                                    title=f"reference lattice on the sum of {len(cells)} reference patterns"))
    return written
