"""Run py4DSTEM's Bragg-disk strain workflow on a .npy datacube.

Runs inside py4DSTEM's own virtual environment (it pins numpy < 2) and
depends on py4DSTEM and NumPy only. Called by bench_strain.py:

    python py4dstem_runner.py settings.json

settings: data (.npy path), out (.npz path), radius (px), reference mask
(.npy path), g1, g2 (basis hint, stemae (x, y) pixel convention), plus
detection settings (relative_to_peak 1 measures intensities against the
brightest Bragg disk rather than the central beam, for monolayers;
radial_bksb subtracts a radial median background). Writes g1, g2, origin (stemae (x, y) convention),
valid, and timings.
"""

import json
import sys
import time

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import py4DSTEM  # noqa: E402
from py4DSTEM.process.calibration.origin import get_origin  # noqa: E402
from py4DSTEM.process.utils import get_maxima_2D  # noqa: E402


def main(settings_path):
    s = json.load(open(settings_path))
    data = np.load(s["data"])
    Ry, Rx, Qy, Qx = data.shape
    ref = np.load(s["reference"])
    t0 = time.perf_counter()
    dc = py4DSTEM.DataCube(data)
    r = s["radius"]
    probe = py4DSTEM.Probe.generate_synthetic_probe(r, 2.0, (Qy, Qx))
    kernel = probe.get_kernel(mode="sigmoid", origin=(Qy / 2, Qx / 2), radii=(r * 1.0, r * 2.0))
    if s["radial_bksb"]:
        # A diffuse background: subtract each pattern's radial median around
        # its own origin before correlating (the origin must be known first).
        qx0, qy0, _ = get_origin(dc, r=r)
        dc.calibration.set_origin((qx0, qy0))
        py4DSTEM.process.polar.PolarDatacube(dc, qmax=float(np.hypot(Qx, Qy) / 2), ellipse=False)
    bv = dc.find_Bragg_disks(
        template=kernel,
        radial_bksb=s["radial_bksb"],
        corrPower=1.0,
        sigma=s.get("sigma", 0),
        subpixel="multicorr",
        upsample_factor=16,
        minRelativeIntensity=s["min_relative_intensity"],
        relativeToPeak=s["relative_to_peak"],
        minPeakSpacing=s["min_spacing"],
        edgeBoundary=int(round(r)),
        maxNumPeaks=s["max_peaks"],
    )
    t1 = time.perf_counter()
    # Origin: measured per pattern from the central beam, then a plane fit (descan).
    cy, cx = s["center_guess_rowcol"]
    bv.measure_origin(center_guess=(cy, cx), score_method="intensity weighted distance")
    bv.fit_origin(fitfunction="plane", plot=False)
    sm = py4DSTEM.StrainMap(braggvectors=bv)
    # Pick g1, g2 among the Bragg vector map maxima by hand (the automatic
    # g2 can be a non-primitive vector on hexagonal lattices).
    kw = dict(subpixel="multicorr", upsample_factor=16, minSpacing=s["min_spacing"], edgeBoundary=1,
              maxNumPeaks=s["max_peaks"], minRelativeIntensity=0.0)
    g = get_maxima_2D(sm.bvm.data, **kw)
    ox, oy = sm.origin  # py4DSTEM (row, col)
    d0 = np.hypot(g["x"] - ox, g["y"] - oy)
    i0 = int(np.argmin(d0))
    picks = []
    for hint in (s["g1"], s["g2"]):
        tx, ty = ox + hint[1], oy + hint[0]  # stemae (x=col, y=row) -> py4DSTEM (row, col)
        picks.append(int(np.argmin(np.hypot(g["x"] - tx, g["y"] - ty))))
    sm.choose_basis_vectors(index_origin=i0, index_g1=picks[0], index_g2=picks[1], **kw)
    sm.set_max_peak_spacing(s["max_peak_spacing"])
    sm.fit_basis_vectors()
    sm.get_strain(gvects=ref)
    t2 = time.perf_counter()
    m = sm.g1g2_map
    g1 = np.stack([m["g1y"].data, m["g1x"].data], -1)  # back to stemae (x, y)
    g2 = np.stack([m["g2y"].data, m["g2x"].data], -1)
    qx0, qy0 = bv.calibration.get_origin()
    np.savez(
        s["out"],
        g1=g1,
        g2=g2,
        origin=np.stack([qy0, qx0], -1),
        valid=sm.mask.astype(bool),
        t_detect=t1 - t0,
        t_strain=t2 - t1,
    )


if __name__ == "__main__":
    main(sys.argv[1])
