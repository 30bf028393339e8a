"""The ``stemae`` command line."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from stemae.errors import InputError

app = typer.Typer(
    help="Strain, phase and domain maps from STEM data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _shape(text: Optional[str], name: str) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*", text) or re.fullmatch(r"\s*(\d+)\s*", text)
    if not m:
        raise typer.BadParameter(f"{name} must look like 64x64 (or a single number), got {text!r}")
    v = [int(g) for g in m.groups()]
    return (v[0], v[-1])


def _box(text: Optional[str]):
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m:
        raise typer.BadParameter(f"--reference must look like R0:R1,C0:C1 (scan rows, cols), got {text!r}")
    r0, r1, c0, c1 = map(int, m.groups())
    if r1 <= r0 or c1 <= c0:
        raise typer.BadParameter(f"--reference {text!r} is empty: need R0 < R1 and C0 < C1")
    return ((r0, r1), (c0, c1))


def _version(value: bool) -> None:
    if value:
        from stemae import __version__

        typer.echo(f"stemae {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """Strain, phase and domain maps from STEM data."""


StrainAxisOpt = Annotated[
    float,
    typer.Option(metavar="DEG", help="Report strain along axes turned by DEG degrees from the scan's +x towards +y "
                 "(e.g. along an interface)."),
]
ScanRotationOpt = Annotated[
    float,
    typer.Option(metavar="DEG", help="Angle of the scan's x axis on the detector (from detector +x towards +y); "
                 "strain is then reported in scan axes."),
]
PerPhaseOpt = Annotated[
    bool,
    typer.Option("--reference-per-phase", help="ccstae: every phase's strain against its own lattice (its positions "
                 "in --reference, or over the whole scan); the store lists each phase's mismatch to the first."),
]
FlipOpt = Annotated[bool, typer.Option("--flip", help="The detector's y axis runs against the scan's.")]


def _frame_options(strain_axis: float, scan_rotation: float, flip: bool) -> dict | None:
    frame = {"strain_axis": strain_axis, "scan_rotation": scan_rotation, "flip": flip}
    return frame if (strain_axis or scan_rotation or flip) else None


def _strain_store(results: Path) -> Path:
    """A results folder's ``strain.zarr``, or the store itself; a folder
    that holds only an interrupted run is refused with how to resume it."""
    if results.suffix == ".zarr":
        return results
    from stemae.runner import partial_status
    from stemae.strain.run import PARTIAL

    kept = partial_status(results / PARTIAL)
    if not (results / "strain.zarr").exists() and kept is not None:
        _fail(InputError(f"{results} holds an interrupted run ({kept[0]} of {kept[1]} blocks mapped), no results yet; "
                         "run the same command again to resume it"))
    return results / "strain.zarr"


def _check_output(path: Path, kind: str = "folder", replaceable: Optional[str] = None) -> None:
    from stemae.data.results import check_output

    try:
        check_output(path, kind, replaceable)
    except InputError as e:
        _fail(e)


@contextlib.contextmanager
def _cluster(scheduler: Optional[str], workers: Optional[int]):
    """A ``dask.distributed.Client`` for ``--scheduler`` or ``--workers`` (None for neither)."""
    if scheduler and workers:
        _fail(InputError("give --scheduler (a running cluster) or --workers (a local one), not both"))
    if workers is not None and workers < 1:
        _fail(InputError(f"--workers must be at least 1, got {workers}"))
    if not scheduler and not workers:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    try:
        client = Client(scheduler, timeout="20s") if scheduler else Client(
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None))
    except OSError as e:
        _fail(InputError(f"cannot reach the Dask scheduler at {scheduler}: {e}"))
    with client:
        yield client
    if workers:
        client.cluster.close()


def _block_rows(rows: Optional[int]) -> Optional[int]:
    if rows is not None and rows < 1:
        raise InputError(f"--block-rows must be at least 1, got {rows}")
    return rows


def _interrupted(out: Path) -> None:
    """Say what an interrupted run kept and how to resume it, then exit."""
    from stemae.runner import partial_status
    from stemae.strain.run import PARTIAL

    kept = partial_status(out / PARTIAL)
    where = f"{kept[0]} of {kept[1]} blocks are kept in {out / PARTIAL}; " if kept else ""
    typer.secho(f"interrupted: {where}run the same command again to resume", fg="yellow", err=True)
    raise typer.Exit(130)


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def simulate(
    out: Path = typer.Argument(..., metavar="PATH", help="Output file: .h5 or .zarr (data plus a 'truth' group)."),
    preset: str = typer.Option("heterostructure", metavar="NAME", help="heterostructure (WS2/WSe2) or polycrystal."),
    scan: str = typer.Option("64x64", metavar="ROWSxCOLS", help="Scan shape, rows x cols."),
    pattern: str = typer.Option(
        "128x128", metavar="ROWSxCOLS", help="Detector shape in pixels, rows x cols (any size)."
    ),
    dose: float = typer.Option(1e5, metavar="X", help="Mean electrons per pattern (Poisson noise); 0 for noise-free."),
    background: float = typer.Option(
        0.0, metavar="X", help="Fraction of electrons in a diffuse Lorentzian background."
    ),
    descan: float = typer.Option(0.0, metavar="PX", help="Drift of the pattern centre across the scan, pixels."),
    central_fraction: Optional[float] = typer.Option(
        None,
        metavar="X",
        help="Fraction of electrons in the central beam (0.97 for a monolayer); preset default if unset.",
    ),
    seed: int = typer.Option(0, metavar="N", help="Random seed."),
):
    """Simulate a 4D-STEM dataset with its ground truth (strain, rotation, phase, lattice)."""
    from stemae.data import write_datacube
    from stemae.simulate import PRESETS

    _check_output(out, "folder" if out.suffix == ".zarr" else "file")
    try:
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        kw = {} if central_fraction is None else {"central_fraction": central_fraction}
        sim = PRESETS[preset](
            _shape(scan, "--scan"),
            _shape(pattern, "--pattern"),
            dose=dose or None,
            background=background,
            descan=descan,
            seed=seed,
            **kw,
        )
        write_datacube(out, sim.data, sim.calibration, {"truth": sim.truth})
    except InputError as e:
        _fail(e)
    typer.echo(f"wrote {out}: {sim.data.shape} {preset}, disk radius {sim.radius:.2f} px")


DatasetOpt = Annotated[
    Optional[str], typer.Option(metavar="NAME", help="Dataset (HDF5) or array (zarr) name inside the file.")
]
ScanShapeOpt = Annotated[
    Optional[str], typer.Option(metavar="ROWSxCOLS", help="Scan shape ROWSxCOLS for a stack of patterns.")
]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]
DeviceOpt = Annotated[str, typer.Option(metavar="DEVICE", help="cpu, cuda or auto (a GPU when PyTorch sees one).")]
ReferenceOpt = Annotated[
    Optional[str],
    typer.Option(
        metavar="R0:R1,C0:C1",
        help="Unstrained reference region R0:R1,C0:C1 (scan rows, cols, end exclusive) of one phase or "
        "grain; default the whole scan (refused if it holds several lattices).",
    ),
]
ReferencePhaseOpt = Annotated[
    Optional[int],
    typer.Option(
        metavar="K", help="ccstae: the reference is this phase's positions (in --reference, or the whole scan)."
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", metavar="PATH", help="Output directory.")]
SchedulerOpt = Annotated[
    Optional[str],
    typer.Option(metavar="ADDRESS", help="Map on a running Dask cluster (its scheduler, e.g. tcp://host:8786); "
                                         "every worker must reach the input file."),
]
BlockRowsOpt = Annotated[
    Optional[int],
    typer.Option(metavar="N", help="Scan rows per block (default: about 32 MB of patterns). Blocks are mapped and "
                                   "written one by one; smaller ones use less memory and lose less when interrupted."),
]
WorkersOpt = Annotated[
    Optional[int], typer.Option(metavar="N", help="Map on a local Dask cluster of N worker processes.")
]
ClassesOpt = Annotated[
    Optional[int], typer.Option(metavar="K", help="CC-ST-AE: number of bases (phases or grain types).  [default: 1]")
]
CompileOpt = Annotated[
    Optional[bool],
    typer.Option("--compile/--no-compile",
                 help="CC-ST-AE: fuse the per-pattern fits with torch.compile (about twice the rate on a CPU, after a "
                      "compile of about a minute).  [default: from 100,000 patterns]"),
]
EpochsOpt = Annotated[Optional[int], typer.Option(metavar="N", help="CC-ST-AE: training epochs.  [default: 3]")]
SeedOpt = Annotated[int, typer.Option(metavar="N", help="Random seed (results are deterministic for a seed).")]
RefineOpt = Annotated[
    Optional[str],
    typer.Option(
        metavar="PROFILE",
        help="CC-ST-AE disk profiles: voigt (pseudo-Voigt edges fitted to the measured central and Bragg "
        "disks) or template (the measurements themselves).  [default: voigt]",
    ),
]


def _read(input: Path, dataset, scan_shape):
    from stemae.data import read_datacube

    return read_datacube(input, dataset=dataset, scan_shape=_shape(scan_shape, "--scan-shape"))


DarkOpt = Annotated[
    Optional[str],
    typer.Option(
        metavar="COUNTS|FILE",
        help="Subtract a pedestal (counts, e.g. 100) or a dark reference image (.npy or TIFF, detector-"
        "shaped) from every pattern.",
    ),
]
MaskOpt = Annotated[
    Optional[Path],
    typer.Option(
        metavar="FILE",
        help="Detector mask (.npy or TIFF, detector-shaped), nonzero at bad pixels; they are filled from "
        "their neighbours, as NaN or Inf pixels always are.",
    ),
]
BinOpt = Annotated[int, typer.Option("--bin", metavar="N", help="Sum BIN x BIN detector pixels.")]
QPixelOpt = Annotated[
    Optional[str],
    typer.Option(
        metavar="SIZE",
        help="Detector pixel size with its units, e.g. 0.0104/A or 0.21mrad (mrad needs --energy); "
        "overrides the file's.",
    ),
]
EllipseOpt = Annotated[
    Optional[str],
    typer.Option(metavar="RATIO,DEG", help="Elliptical distortion of the detector to remove (major over minor axis, "
                 "major axis angle), as `stemae fit-ellipse` measures it."),
]
EnergyOpt = Annotated[Optional[float], typer.Option(metavar="KEV", help="Beam energy in keV; overrides the file's.")]
ScanStepOpt = Annotated[
    Optional[str],
    typer.Option(metavar="STEP", help="Scan step with its units, e.g. 0.3nm or 3A; overrides the file's."),
]


def _quantity(text: str, name: str, units: dict[str, str]) -> tuple[float, str]:
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(\S+)\s*", text)
    if m and m.group(2) in units:
        try:
            value = float(m.group(1))
        except ValueError:
            value = -1.0
        if value > 0:
            return value, units[m.group(2)]
    raise typer.BadParameter(f"{name} must be a positive number with units ({', '.join(units)}), got {text!r}")


def _calibrated(cube, q_pixel_size: Optional[str], energy: Optional[float], scan_step: Optional[str],
                ellipse: Optional[str] = None):
    """The datacube with the calibration given on the command line (units parsed and checked)."""
    from dataclasses import replace

    cal = cube.calibration
    if q_pixel_size is not None:
        v, u = _quantity(q_pixel_size, "--q-pixel-size", {"/A": "1/A", "1/A": "1/A", "mrad": "mrad"})
        cal = replace(cal, q_pixel_size=v, q_units=u)
    if energy is not None:
        if energy <= 0:
            raise typer.BadParameter(f"--energy must be positive (keV), got {energy}")
        cal = replace(cal, beam_energy_kev=energy)
    if scan_step is not None:
        v, u = _quantity(scan_step, "--scan-step", {"nm": "nm", "A": "A", "pm": "pm", "um": "um"})
        cal = replace(cal, r_pixel_size=v, r_units=u)
    if ellipse is not None:
        try:
            ratio, angle = (float(v) for v in ellipse.split(","))
        except ValueError:
            raise typer.BadParameter(f"--ellipse must look like 1.02,30 (ratio, degrees), got {ellipse!r}") from None
        if not 1 <= ratio < 1.5:
            raise typer.BadParameter(f"--ellipse ratio must be from 1 to 1.5 (major over minor axis), got {ratio}")
        cal = replace(cal, ellipse_ratio=ratio, ellipse_angle_deg=angle)
    cal.inverse_angstrom_per_pixel()  # mrad without an energy is refused here, before any work
    return replace(cube, calibration=cal)


def _open(
    input: Path,
    dataset,
    scan_shape,
    dark: Optional[str] = None,
    mask: Optional[Path] = None,
    bin: int = 1,
    q_pixel_size: Optional[str] = None,
    energy: Optional[float] = None,
    scan_step: Optional[str] = None,
    ellipse: Optional[str] = None,
):
    """Read a datacube, calibrate it and prepare it (:func:`stemae.data.prepare.prepare`)."""
    from stemae.data.prepare import prepare, read_detector_array

    cube = _calibrated(_read(input, dataset, scan_shape), q_pixel_size, energy, scan_step, ellipse)
    if dark is not None:
        try:
            dark = float(dark)
        except ValueError:
            dark = read_detector_array(dark, cube.pattern_shape, "--dark")
    if mask is not None:
        mask = read_detector_array(mask, cube.pattern_shape, "--mask") != 0
    return prepare(cube, dark=dark, mask=mask, bin=bin)


@app.command()
def strain(
    input: Path = typer.Argument(
        ..., metavar="INPUT", help="Datacube: .npy, .h5/.emd (py4DSTEM too), .zarr, .mib, .blo, .dm4, ..."
    ),
    out: OutOpt = Path("stemae-results"),
    method: str = typer.Option(
        "ccstae",
        metavar="METHOD",
        help="ccstae (learned; trains on the data), xcorr (template cross-correlation) or com (disk centroids).",
    ),
    reference: ReferenceOpt = None,
    reference_phase: ReferencePhaseOpt = None,
    reference_per_phase: PerPhaseOpt = False,
    strain_axis: StrainAxisOpt = 0.0,
    scan_rotation: ScanRotationOpt = 0.0,
    flip: FlipOpt = False,
    classes: ClassesOpt = None,
    epochs: EpochsOpt = None,
    refine: RefineOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    dataset: DatasetOpt = None,
    scan_shape: ScanShapeOpt = None,
    dark: DarkOpt = None,
    mask: MaskOpt = None,
    bin: BinOpt = 1,
    q_pixel_size: QPixelOpt = None,
    ellipse: EllipseOpt = None,
    energy: EnergyOpt = None,
    scan_step: ScanStepOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    block_rows: BlockRowsOpt = None,
    compile: CompileOpt = None,
    progress: ProgressOpt = True,
):
    """Map strain and rotation (and phase, for ccstae); writes OUT/strain.zarr, PNG figures and the method's
    bundle OUT/model (the trained CC-ST-AE or the classical methods' fitted state). An interrupted run resumes
    when the same command is run again."""
    from stemae.strain.run import run_strain

    _check_output(out)
    try:
        given = [name for name, v in (("--classes", classes), ("--epochs", epochs), ("--refine", refine),
                                      ("--compile", compile)) if v is not None]
        if method != "ccstae" and given:
            raise InputError(f"{', '.join(given)} apply to ccstae only, not to {method}")
        classes, epochs, refine = _ccstae_settings(classes, epochs, refine)
        cube = _open(input, dataset, scan_shape, dark, mask, bin, q_pixel_size, energy, scan_step, ellipse)
        t0 = time.perf_counter()
        with _cluster(scheduler, workers) as client:
            res = run_strain(
                cube,
                out,
                method=method,
                reference=_box(reference),
                reference_phase=reference_phase,
                per_phase=reference_per_phase,
                frame=_frame_options(strain_axis, scan_rotation, flip),
                classes=classes,
                epochs=epochs,
                refine=refine,
                seed=seed,
                device=device,
                progress=progress,
                client=client,
                rows=_block_rows(block_rows),
                compile=compile,
            )
    except (InputError, ValueError) as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted(out)
    _report(res, time.perf_counter() - t0, out, cube)


def _ccstae_settings(classes, epochs, refine) -> tuple[int, int, str]:
    """The CC-ST-AE's settings with their defaults, checked."""
    classes = 1 if classes is None else classes
    epochs = 3 if epochs is None else epochs
    if classes < 1:
        raise InputError(f"--classes must be at least 1 (one base per phase or grain type), got {classes}")
    if epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {epochs}")
    return classes, epochs, refine or "voigt"


def _report(res: dict, seconds: float, out: Path, cube) -> None:
    n = res["valid"].size
    typer.echo(
        f"{n} patterns in {seconds:.1f} s ({n / seconds:.0f}/s), {res['valid'].mean():.1%} valid; "
        f"wrote {out / 'strain.zarr'} and figures"
    )
    lat = cube.calibration.lattice(res["g_ref"])
    if lat:
        typer.echo(
            f"reference lattice: a = {lat['a_A']:.4f} A, b = {lat['b_A']:.4f} A, gamma = {lat['gamma_deg']:.2f} "
            f"deg; d-spacings of g1, g2: {lat['d1_A']:.4f}, {lat['d2_A']:.4f} A"
        )
    else:
        typer.echo("no detector calibration: lengths are in detector pixels (give --q-pixel-size for angstrom)")


@app.command()
def train(
    input: Path = typer.Argument(..., metavar="INPUT", help="Datacube to train on."),
    model: Path = typer.Option(
        ..., "--model", "-m", metavar="BUNDLE", help="Bundle folder to write (config.json + weights.safetensors)."
    ),
    classes: ClassesOpt = None,
    epochs: EpochsOpt = None,
    refine: RefineOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    dataset: DatasetOpt = None,
    scan_shape: ScanShapeOpt = None,
    dark: DarkOpt = None,
    mask: MaskOpt = None,
    bin: BinOpt = 1,
    q_pixel_size: QPixelOpt = None,
    ellipse: EllipseOpt = None,
    energy: EnergyOpt = None,
    scan_step: ScanStepOpt = None,
    progress: ProgressOpt = True,
):
    """Train a CC-ST-AE on a datacube and save it as a bundle for `stemae predict`."""
    from stemae.nn.bundle import CONFIG
    from stemae.strain import ccstae
    from stemae.strain.run import train_model

    _check_output(model, replaceable=CONFIG)
    try:
        classes, epochs, refine = _ccstae_settings(classes, epochs, refine)
        cube = _open(input, dataset, scan_shape, dark, mask, bin, q_pixel_size, energy, scan_step, ellipse)
        net, record = train_model(
            cube, classes=classes, epochs=epochs, refine=refine, seed=seed, device=device, progress=progress
        )
        ccstae.save(net, model, record)
    except (InputError, ValueError) as e:
        _fail(e)
    typer.echo(f"trained {classes} base(s) in {epochs} epochs, final loss {record['loss'][-1]:.4g}; wrote {model}")


@app.command()
def predict(
    input: Path = typer.Argument(..., metavar="INPUT", help="Datacube to map."),
    model: Path = typer.Option(
        ..., "--model", "-m", metavar="BUNDLE", help="Bundle folder written by `stemae train` or `stemae strain`."
    ),
    out: OutOpt = Path("stemae-results"),
    reference: ReferenceOpt = None,
    reference_phase: ReferencePhaseOpt = None,
    reference_per_phase: PerPhaseOpt = False,
    strain_axis: StrainAxisOpt = 0.0,
    scan_rotation: ScanRotationOpt = 0.0,
    flip: FlipOpt = False,
    refine: Annotated[
        Optional[str], typer.Option(metavar="PROFILE", help="Disk profiles (voigt or template); default the bundle's.")
    ] = None,
    device: DeviceOpt = "cpu",
    dataset: DatasetOpt = None,
    scan_shape: ScanShapeOpt = None,
    dark: DarkOpt = None,
    mask: MaskOpt = None,
    bin: BinOpt = 1,
    q_pixel_size: QPixelOpt = None,
    ellipse: EllipseOpt = None,
    energy: EnergyOpt = None,
    scan_step: ScanStepOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    block_rows: BlockRowsOpt = None,
    compile: CompileOpt = None,
    progress: ProgressOpt = True,
):
    """Map strain (and phase) of a datacube with a bundle: a trained CC-ST-AE (`stemae train`) or a classical
    method's state (OUT/model of `stemae strain --method xcorr`). An interrupted run resumes when the same
    command is run again."""
    from stemae.nn.bundle import bundle_provenance, bundle_kind
    from stemae.strain import ccstae, classical
    from stemae.strain.run import predict_classical, predict_strain

    _check_output(out)
    try:
        kind = bundle_kind(model)
        if kind == classical.KIND:
            if refine is not None or reference_phase is not None or reference_per_phase or compile is not None:
                raise InputError("--refine, --compile and references by phase apply to ccstae bundles only")
            state, shape = classical.load_state(model)
        else:
            net = ccstae.load(model, profile=refine)
            shape = net.pattern_shape
        cube = _open(input, dataset, scan_shape, dark, mask, bin, q_pixel_size, energy, scan_step, ellipse)
        if tuple(cube.pattern_shape) != tuple(shape):
            raise InputError(
                f"{input}: patterns are {cube.pattern_shape[0]}x{cube.pattern_shape[1]} but the model was made "
                f"on {shape[0]}x{shape[1]}"
            )
        t0 = time.perf_counter()
        with _cluster(scheduler, workers) as client:
            common = dict(reference=_box(reference), frame=_frame_options(strain_axis, scan_rotation, flip),
                          progress=progress, bundle=bundle_provenance(model), client=client,
                          rows=_block_rows(block_rows))
            if kind == classical.KIND:
                res = predict_classical(state, cube, out, **common)
            else:
                res = predict_strain(net, cube, out, reference_phase=reference_phase, per_phase=reference_per_phase,
                                     device=device, compile=compile, **common)
    except (InputError, ValueError) as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted(out)
    _report(res, time.perf_counter() - t0, out, cube)


@app.command()
def demo(
    out: OutOpt = Path("demo-results"),
    scan: str = typer.Option("64x64", metavar="ROWSxCOLS", help="Scan shape."),
    pattern: str = typer.Option("128x128", metavar="ROWSxCOLS", help="Detector shape."),
    dose: float = typer.Option(1e5, metavar="X", help="Electrons per pattern."),
    seed: int = typer.Option(0, metavar="N", help="Random seed."),
):
    """Simulate a WS2/WSe2 heterostructure, map strain and phase with ccstae and xcorr, score both."""
    from stemae.data import Datacube, write_datacube
    from stemae.simulate import heterostructure
    from stemae.strain.evaluate import strain_errors, truth_strain_maps
    from stemae.strain.run import run_strain
    from stemae.viz import plot_strain_maps

    _check_output(out)
    t0 = time.perf_counter()
    sim = heterostructure(_shape(scan, "--scan"), _shape(pattern, "--pattern"), dose=dose, seed=seed)
    Ry, Rx = sim.data.shape[:2]
    reference = ((0, Ry), (0, max(1, Rx // 6)))
    write_datacube(out / "heterostructure.h5", sim.data, sim.calibration, {"truth": sim.truth})
    typer.echo(f"simulated {sim.data.shape} WS2/WSe2 at {dose:.0e} e/pattern in {time.perf_counter() - t0:.1f} s")
    cube = Datacube(sim.data, sim.calibration, "demo")
    rows = []
    for method, sub in (("ccstae", out), ("xcorr", out / "xcorr")):
        t1 = time.perf_counter()
        res = run_strain(cube, sub, method=method, reference=reference, classes=2, seed=seed, progress=True)
        dt = time.perf_counter() - t1
        err = strain_errors(res, truth_strain_maps(sim.truth, reference, res["g_ref"]), res["valid"])
        rows.append((method, dt, err, res))
    truth = truth_strain_maps(sim.truth, reference, rows[0][3]["g_ref"])
    plot_strain_maps(truth, out / "truth_maps.png", title="ground truth")
    typer.echo(f"mean absolute error vs ground truth (reference: scan columns 0:{reference[1][1]}):")
    typer.echo("  method   seconds   e_xx      e_yy      e_xy      theta(deg)  valid")
    for method, dt, err, _ in rows:
        typer.echo(
            f"  {method:7s} {dt:7.1f}   {err['e_xx']:.2e}  {err['e_yy']:.2e}  {err['e_xy']:.2e}  "
            f"{err['theta']:.3f}       {err['valid_fraction']:.0%}"
        )
    phase = rows[0][3]["phase"]
    typer.echo(f"ccstae phase map agrees with the truth at {(phase == sim.truth['phase']).mean():.1%} of positions")
    typer.echo(
        f"results in {out}/ (ccstae: strain.zarr, strain_maps.png, diagnostics.png, phase_map.png, bases.png, "
        f"loss.png, model/; xcorr/ for the classical method; truth_maps.png)"
    )


@app.command("simulate-domains")
def simulate_domains(
    out: Path = typer.Argument(..., metavar="PATH", help="Output folder: one TIFF per frame plus truth.npz."),
    temperatures: str = typer.Option(
        "25,50,75,100,125,150,175,200", metavar="T1,T2,...", help="Series temperatures in C."
    ),
    size: str = typer.Option("1024x1024", metavar="ROWSxCOLS", help="Image shape, rows x cols."),
    regions: int = typer.Option(16, metavar="N", help="Domain regions in the field of view."),
    dose: float = typer.Option(200.0, metavar="X", help="Mean counts per pixel (Poisson); 0 for noise-free."),
    seed: SeedOpt = 0,
):
    """Simulate a temperature series of BF-STEM images of ferroelectric stripe domains with truth."""
    import numpy as np
    import tifffile

    from stemae.data.results import atomic_path
    from stemae.simulate.domains import DOMAIN_TYPES, simulate_domain_series

    _check_output(out)
    try:
        temps = [float(v) for v in temperatures.split(",")]
    except ValueError:
        _fail(InputError(f"--temperatures must be numbers separated by commas, got {temperatures!r}"))
    sim = simulate_domain_series(temps, _shape(size, "--size"), regions, dose=dose, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    for t, img in zip(temps, sim.images):
        with atomic_path(out / f"frame_{t:g}C.tif") as tmp:
            tifffile.imwrite(tmp, img)
    with atomic_path(out / "truth.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                labels=sim.labels,
                angle=sim.angle,
                period=sim.period,
                temperatures=sim.temperatures,
                types=np.array(DOMAIN_TYPES),
            )
    typer.echo(
        f"wrote {len(temps)} frames {sim.images.shape[1]}x{sim.images.shape[2]} to {out}/ "
        f"(frame_<T>C.tif, truth.npz); truth fractions per frame:"
    )
    for t, f in zip(temps, sim.fractions()):
        typer.echo(f"  {t:6g} C  " + "  ".join(f"{n} {v:.2f}" for n, v in zip(DOMAIN_TYPES, f)))


@app.command()
def domains(
    images: list[Path] = typer.Argument(
        ..., metavar="IMAGES...", help="Images: TIFF, PNG, DM3/DM4 or .npy; several files or one stack."
    ),
    out: OutOpt = Path("domains-results"),
    labels: Optional[str] = typer.Option(None, metavar="L1,L2,...", help="Frame labels, e.g. temperatures: 25,50,75."),
    label_name: str = typer.Option(
        "temperature (C)", metavar="TEXT", help="What the labels are, for the table and plot."
    ),
    window: Optional[int] = typer.Option(
        None,
        metavar="PX",
        help="Window side in px (default: four of the median stripe period the images show, more for faint "
        "stripes, or the --init model's).",
    ),
    stride: Optional[int] = typer.Option(None, metavar="PX", help="Step between windows in px (default window/4)."),
    clusters: Optional[int] = typer.Option(
        None,
        metavar="N",
        help="Number of domain types, the domain-free type included (default: the wall-angle modes found).",
    ),
    epochs: int = typer.Option(
        20, metavar="N", help="Training epochs (with --init: fine-tuning epochs; 0 applies it)."
    ),
    latent: int = typer.Option(8, metavar="N", help="Content latents."),
    l1: float = typer.Option(1e-3, metavar="X", help="Target L1 weight on the content latents."),
    l1_start: int = typer.Option(3, metavar="N", help="Epochs without L1."),
    l1_ramp: int = typer.Option(5, metavar="N", help="Epochs over which L1 rises to its target."),
    init: Optional[Path] = typer.Option(
        None, metavar="BUNDLE", help="Start from this trained bundle (transfer learning)."
    ),
    same_types: bool = typer.Option(
        False, "--same-types", help="With --init: label every window against the bundle's domain types (same types, "
                                     "same numbers as the run that made it) instead of finding the types anew."
    ),
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    progress: ProgressOpt = True,
):
    """Map ferroelectric domains in BF-STEM images or a series with the windowing autoencoder."""
    from stemae.data.images import read_images
    from stemae.domains.model import load_model
    from stemae.domains.run import map_domains, parse_labels, write_domain_results
    from stemae.nn.bundle import bundle_provenance
    from stemae.nn.device import resolve_device

    _check_output(out)
    t0 = time.perf_counter()
    try:
        dev = resolve_device(device)
        stack, names = read_images(images)
        frame_labels, kind = parse_labels(labels, len(stack))
        model, cfg = load_model(init, dev) if init is not None else (None, {})
        if same_types and "type_angles" not in cfg:
            raise InputError("--same-types needs --init with a bundle that records its domain types "
                             "(written by `stemae domains` of this version)")
        with _cluster(scheduler, workers) as client:
            maps, info, model = map_domains(
                stack,
                window=window,
                stride=stride,
                init=model,
                init_window=cfg.get("window"),
                n_clusters=clusters,
                epochs=epochs,
                latent=latent,
                l1=l1,
                l1_start=l1_start,
                l1_ramp=l1_ramp,
                seed=seed,
                device=dev,
                progress=progress,
                client=client,
                types=cfg["type_angles"] if same_types else None,
            )
        if init is not None:
            info["init"] = bundle_provenance(init)
        write_domain_results(out, stack, names, frame_labels, label_name if labels else "frame", maps, info, model)
    except (InputError, ValueError, OSError) as e:
        _fail(e)
    n = maps["segmentation"].size
    sized = (
        f" (sized from periods {', '.join(f'{p:.1f}' for p in sorted(info['periods']))} px)" if info["periods"] else ""
    )
    typer.echo(
        f"{len(stack)} frames, {n} windows of {info['window']} px{sized} (stride {info['stride']}), "
        f"{info['n_clusters']} domain types, {time.perf_counter() - t0:.1f} s"
    )
    typer.echo("  type  order   wall angle(deg)  period(px)  fraction per frame")
    for k in range(info["n_clusters"]):
        ang, per = maps["series_orientation"][k], maps["series_period"][k]
        order = maps["series_order"][k]
        name = "domain-free" if k == 0 else f"{ang:15.1f}"
        typer.echo(
            f"  {k:4d}  {order:6.1f}  {name:>15}  {per:10.1f}  " + " ".join(f"{v:.2f}" for v in maps["fractions"][:, k])
        )
    typer.echo(
        "  (order: the median stripe order of the type's windows over what noise alone gives; at most 1 is domain-free)"
    )
    typer.echo(
        f"results in {out}/: domains.zarr, fractions.csv, fractions.png, segmentation.png, "
        f"latent_maps.png, loss.png, model/"
    )


@app.command()
def show(
    input: Path = typer.Argument(..., metavar="INPUT", help="The datacube the results were made from."),
    results: Path = typer.Option(
        ..., "--results", "-r", metavar="RESULTS", help="Results folder (with strain.zarr) or the store."
    ),
    at: str = typer.Option(..., metavar="ROW,COL", help="Scan position ROW,COL."),
    out: Path = typer.Option(
        None, "--out", "-o", metavar="PATH", help="Figure to write (default RESULTS/pattern_ROW_COL.png)."
    ),
    dataset: DatasetOpt = None,
    scan_shape: ScanShapeOpt = None,
    dark: DarkOpt = None,
    mask: MaskOpt = None,
    bin: BinOpt = 1,
):
    """Draw one scan position's pattern with its fitted lattice and print its maps' values."""
    import numpy as np

    from stemae.data import read_results
    from stemae.viz import plot_lattice

    store = _strain_store(results)
    try:
        row, col = _shape(at, "--at")
        if out is None:
            out = store.parent / f"pattern_{row}_{col}.png"
        _check_output(out, "file")
        arrays, attrs = read_results(store)
        Ry, Rx = arrays["valid"].shape
        if not (0 <= row < Ry and 0 <= col < Rx):
            raise InputError(f"--at {row},{col} is outside the {Ry}x{Rx} scan")
        cube = _open(input, dataset, scan_shape, dark, mask, bin)
        if cube.scan_shape != (Ry, Rx) or list(cube.pattern_shape) != attrs["pattern_shape"]:
            raise InputError(
                f"{input} is a {cube.scan_shape} scan of {cube.pattern_shape} patterns but the results "
                f"are of a {(Ry, Rx)} scan of {tuple(attrs['pattern_shape'])} patterns"
            )
        pattern = np.asarray(cube.data[row, col], dtype=np.float32)
    except (InputError, ValueError) as e:
        _fail(e)
    G = np.stack([arrays["g1"][row, col], arrays["g2"][row, col]], -1).astype(np.float64)
    values = ", ".join(f"{k} {arrays[k][row, col]:+.4f}" for k in ("e_xx", "e_yy", "e_xy", "theta"))
    state = "valid" if arrays["valid"][row, col] else "NOT valid"
    phase = f", phase {arrays['phase'][row, col]}" if "phase" in arrays else ""
    if np.isfinite(G).all():
        plot_lattice(
            pattern,
            arrays["origin"][row, col],
            G,
            attrs["disk_radius_px"],
            out,
            title=f"({row}, {col}) {state}{phase}: fitted lattice",
        )
    typer.echo(f"({row}, {col}): {state}{phase}; {values} (theta in deg); wrote {out}")


@app.command()
def export(
    results: Path = typer.Argument(..., metavar="RESULTS", help="Results folder (with strain.zarr) or the store."),
    out: Path = typer.Option(
        None, "--out", "-o", metavar="PATH", help="Folder for the files (default: the results folder)."
    ),
):
    """Write strain maps as HyperSpy signals (strain.hspy, strain_sigma.hspy) with calibrated scan axes."""
    from stemae.data.export import export_hyperspy

    store = _strain_store(results)
    if out is not None:
        _check_output(out)
    try:
        paths = export_hyperspy(store, out)
    except InputError as e:
        _fail(e)
    typer.echo("wrote " + ", ".join(map(str, paths)) + " (hyperspy.api.load opens them)")


@app.command("fit-ellipse")
def fit_ellipse(
    input: Path = typer.Argument(..., metavar="INPUT", help="A ring pattern: a datacube (its mean pattern is used) "
                                 "or a 2D image (.npy, TIFF, PNG) of a polycrystalline or amorphous sample."),
    radii: str = typer.Option(..., metavar="R0,R1", help="Inner and outer radius (px) around one ring."),
    center: Optional[str] = typer.Option(None, metavar="X,Y", help="Pattern centre (px); default the central beam."),
    dataset: DatasetOpt = None,
    scan_shape: ScanShapeOpt = None,
):
    """Measure the detector's elliptical distortion on a ring; prints the --ellipse value to give."""
    import numpy as np

    from stemae.data.calibration import fit_ring_ellipse
    from stemae.data.images import read_images

    try:
        r0, r1 = (float(v) for v in radii.split(","))
        c = None if center is None else np.array([float(v) for v in center.split(",")])
    except ValueError:
        _fail(InputError(f"--radii must look like 40,60 and --center like 64.5,63, got {radii!r}, {center!r}"))
    try:
        if input.suffix.lower() in (".tif", ".tiff", ".png") or (
            input.suffix.lower() == ".npy" and input.is_file() and np.load(input, mmap_mode="r").ndim == 2
        ):
            image = read_images([input])[0][0]
        else:
            image = _read(input, dataset, scan_shape).data.mean((0, 1)).compute()
        ratio, angle, used = fit_ring_ellipse(image, (r0, r1), c)
    except (InputError, ValueError) as e:
        _fail(e)
    typer.echo(f"ellipse: major/minor {ratio:.4f}, major axis at {angle:.1f} deg (centre {used[0]:.1f}, {used[1]:.1f})")
    typer.echo(f"give: --ellipse {ratio:.4f},{angle:.1f}")


@app.command()
def live(
    model: Path = typer.Option(..., "--model", "-m", metavar="BUNDLE",
                               help="Strain bundle (CC-ST-AE or classical) to map the frames with."),
    detector: Annotated[str, typer.Option(metavar="KIND", help="Detector protocol: merlin or dectris.")] = "merlin",
    host: Annotated[str, typer.Option(metavar="HOST", help="Detector (data and control) host.")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(
        metavar="PORT", help="Detector data port (default Merlin 6342, DECTRIS 9999: its ZeroMQ stream).")] = None,
    api_port: Annotated[Optional[int], typer.Option(
        metavar="PORT", help="Detector control port (default Merlin 6341, DECTRIS 80: its REST API).")] = None,
    scan: Annotated[str, typer.Option(metavar="ROWSxCOLS", help="Scan shape.")] = ...,
    out: OutOpt = Path("stemae-live"),
    view: Annotated[Optional[int], typer.Option(
        metavar="PORT", help="Serve the live page at http://HOST:PORT/ (see --view-host).")] = None,
    view_host: Annotated[str, typer.Option(metavar="HOST", help="Address the live page listens on.")] = "127.0.0.1",
    timeout_s: Annotated[float, typer.Option(
        metavar="SECONDS", help="How long to wait for the first frame, and for each next one, before giving up "
                                "(the frames and maps so far are kept).")] = 60.0,
    reference: ReferenceOpt = None,
    reference_phase: ReferencePhaseOpt = None,
    reference_per_phase: PerPhaseOpt = False,
    strain_axis: StrainAxisOpt = 0.0,
    scan_rotation: ScanRotationOpt = 0.0,
    flip: FlipOpt = False,
    block_rows: Annotated[Optional[int], typer.Option(
        metavar="N", help="Scan rows per block (default: the fewest holding 256 patterns); a block is mapped as "
                          "soon as its frames are in, and a crash loses at most the block being mapped.")] = None,
    device: DeviceOpt = "cpu",
    progress: ProgressOpt = True,
):
    """Map strain and phase while the detector scans: frames arrive through LiberTEM-live (extra `live`), are
    recorded into OUT/frames.zarr and mapped block by block; the run ends with the same results and figures as
    `stemae predict OUT/frames.zarr`, which also resumes a run that was cut off."""
    import functools

    from stemae.nn.bundle import bundle_kind
    from stemae.nn.device import resolve_device
    from stemae.strain import ccstae, classical
    from stemae.strain.run import PARTIAL

    _check_output(out)
    try:
        try:
            from stemae.live import DETECTORS, DetectorGone, live_strain, receive
        except ImportError as e:
            raise InputError(f"stemae live needs the live extra (pip install 'stemae[live]'): {e}") from None
        if detector not in DETECTORS:
            raise InputError(f"--detector {detector!r}: choose from {', '.join(DETECTORS)}")
        port = port or DETECTORS[detector]["port"]
        api_port = api_port or DETECTORS[detector]["api_port"]
        shape = _shape(scan, "--scan")
        if shape is None:
            raise InputError("--scan ROWSxCOLS is needed")
        if bundle_kind(model) == classical.KIND:
            if reference_phase is not None or reference_per_phase:
                raise InputError("references by phase apply to ccstae bundles only")
            bases = classical.load_state(model)[0]["basis"][None]
        else:
            bases = ccstae.load(model).G.detach().cpu().double().numpy()
        dev = resolve_device(device)
    except (InputError, ValueError) as e:
        _fail(e)
    views = []

    def started(cube):
        if view is not None:
            from stemae.liveview import LiveView

            v = LiveView(cube, out / PARTIAL, bases)
            v.serve(view, view_host)
            views.append(v)
            typer.echo(f"live page at http://{view_host}:{view}/")

    typer.echo(f"waiting for a {detector} acquisition at {host}:{port} ({shape[0]}x{shape[1]} scan)")
    t0 = time.perf_counter()
    try:
        res = live_strain(model, out, functools.partial(receive, detector=detector, host=host, port=port,
                                                        api_port=api_port, timeout=timeout_s),
                          shape, reference=_box(reference), reference_phase=reference_phase,
                          per_phase=reference_per_phase, frame=_frame_options(strain_axis, scan_rotation, flip),
                          rows=_block_rows(block_rows), device=dev, progress=progress, on_start=started,
                          stall=timeout_s)
    except DetectorGone as e:
        for v in views:
            v.finish(str(e), failed=True)
        _fail(InputError(f"{e}. The frames received are in {out}/frames.zarr and the maps of the blocks mapped in "
                         f"{out}/{PARTIAL}; when the frames are complete, `stemae predict {out}/frames.zarr --model "
                         f"{model} --out {out}` finishes the run"))
    except (InputError, ValueError) as e:
        for v in views:
            v.finish(str(e), failed=True)
        _fail(e)
    except KeyboardInterrupt:
        _interrupted(out)
    for v in views:
        v.finish()
    from stemae.data.readers import read_datacube

    _report(res, time.perf_counter() - t0, out, read_datacube(out / "frames.zarr"))


@app.command()
def serve(
    repository: Path = typer.Argument(..., metavar="MODEL_REPOSITORY",
                                      help="Folder laid out as NAME/VERSION/, each holding a stemae bundle."),
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to listen on (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="HTTP port.")] = 8000,
    max_batch: Annotated[int, typer.Option(metavar="N", help="Items per step call and per request.")] = 256,
    max_delay_ms: Annotated[float, typer.Option(
        metavar="MS", help="How long a request waits for others to join its batch.")] = 5.0,
    max_body_mb: Annotated[float, typer.Option(metavar="MB", help="Largest request body, MiB.")] = 256.0,
    token_file: Annotated[Optional[Path], typer.Option(
        metavar="FILE", help="File holding a bearer token that every request but probes and /metrics must carry "
                             "(or set STEMAE_SERVE_TOKEN).")] = None,
    graceful_s: Annotated[float, typer.Option(
        metavar="SECONDS", help="On SIGTERM, how long requests in flight may take to finish.")] = 30.0,
    device: DeviceOpt = "cpu",
):
    """Serve the bundles of a model repository over the Open Inference Protocol (KServe v2, HTTP, JSON and
    binary tensors) with dynamic batching and Prometheus metrics at /metrics. Needs the `serve` extra."""
    import os

    from stemae.nn.device import resolve_device

    try:
        from stemae.serve.app import Settings, serve as run_server
        from stemae.serve.models import repository_layout
    except ImportError as e:
        _fail(InputError(f"stemae serve needs the serve extra (pip install 'stemae[serve]'): {e}"))
    try:
        for name, value in (("--max-batch", max_batch), ("--max-body-mb", max_body_mb), ("--port", port)):
            if value <= 0:
                raise InputError(f"{name} must be positive, got {value}")
        if max_delay_ms < 0:
            raise InputError(f"--max-delay-ms must be at least 0, got {max_delay_ms}")
        token = os.environ.get("STEMAE_SERVE_TOKEN") or None
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as e:
                raise InputError(f"cannot read --token-file: {e}") from None
            if not token:
                raise InputError(f"{token_file} is empty; a bearer token is needed")
        layout = repository_layout(repository)
    except InputError as e:
        _fail(e)
    for name, version, _, kind in layout:
        typer.echo(f"model {name} version {version}: {kind}")
    typer.echo(f"serving on http://{host}:{port}/v2 (ready at /v2/health/ready once the models are loaded)")
    run_server(Settings(str(repository), max_batch, max_delay_ms / 1e3, int(max_body_mb * 2**20), token,
                        resolve_device(device)), host, port, graceful_s)


@app.command()
def info(
    input: Path = typer.Argument(..., metavar="INPUT", help="Datacube file."),
    dataset: DatasetOpt = None,
    scan_shape: ScanShapeOpt = None,
):
    """Print a datacube's shape, type and calibration without loading it."""
    try:
        cube = _read(input, dataset, scan_shape)
    except InputError as e:
        _fail(e)
    typer.echo(f"source: {cube.source}")
    typer.echo(f"shape (Ry, Rx, Qy, Qx): {tuple(cube.data.shape)} {cube.data.dtype}")
    for k, v in cube.calibration.to_attrs().items():
        typer.echo(f"{k}: {v}")
