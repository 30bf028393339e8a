"""The conventions of stemae's results, in one place: the axes, signs and
units of the strain maths (:mod:`stemae.geometry` implements them), and the
units, description and dimension names of every array a results store may
hold (``strain.zarr`` and ``domains.zarr``)."""

#: The strain conventions, recorded in every strain store.
CONVENTIONS = (
    "arrays (Ry, Rx, Qy, Qx); vectors (x, y) with x along detector columns and "
    "y along detector rows (down); lattice bases have g1, g2 as columns; "
    "real-space deformation F maps reference to local lattice (a = F a_ref, "
    "g = F^-T g_ref); F = R U exact right polar decomposition; e_xx = U_xx - 1, "
    "e_yy = U_yy - 1, e_xy = U_xy (tensor shear); theta = angle of R in degrees, "
    "positive from +x towards +y (clockwise on screen with row 0 at top)"
)


#: Dimension names of the scan axes in the results store.
SCAN = ("scan_y", "scan_x")
#: Units, description and dimension names of every array a strain store (strain.zarr) may hold.
STRAIN_ARRAYS = {
    "e_xx": ("1", "normal strain along x, U_xx - 1", SCAN),
    "e_yy": ("1", "normal strain along y, U_yy - 1", SCAN),
    "e_xy": ("1", "shear strain (tensor), U_xy", SCAN),
    "theta": ("deg", "lattice rotation, positive from +x towards +y", SCAN),
    "valid": ("", "lattice fit succeeded and passed the residual check", SCAN),
    "g1": ("px", "first reciprocal basis vector (x, y) in detector pixels", SCAN + ("xy",)),
    "g2": ("px", "second reciprocal basis vector (x, y) in detector pixels", SCAN + ("xy",)),
    "origin": ("px", "central-beam position (x, y) in detector pixels", SCAN + ("xy",)),
    "g1_inv_A": ("1/A", "first reciprocal basis vector (x, y), calibrated and undistorted", SCAN + ("xy",)),
    "g2_inv_A": ("1/A", "second reciprocal basis vector (x, y), calibrated and undistorted", SCAN + ("xy",)),
    "sigma_e_xx": ("1", "standard deviation of e_xx (fit and reference)", SCAN),
    "sigma_e_yy": ("1", "standard deviation of e_yy (fit and reference)", SCAN),
    "sigma_e_xy": ("1", "standard deviation of e_xy (fit and reference)", SCAN),
    "sigma_theta": ("deg", "standard deviation of theta (fit and reference)", SCAN),
    "n_disks": ("count", "Bragg disks used in the lattice fit besides the central beam", SCAN),
    "rms": ("px", "weighted RMS residual of the lattice fit", SCAN),
    "chi2": ("1", "Pearson chi-square of the pattern fit per degree of freedom (about 1 where the model fits)", SCAN),
    "disk_intensity": ("counts", "virtual dark field: fitted counts in each reflection's disk, last axis as 'hk'",
                       SCAN + ("reflection",)),
    "hk": ("", "reflection indices (h, k) of disk_intensity's last axis, in the base's g1, g2", ("reflection", "hk")),
    "background": ("counts/px", "scale of the diffuse background (counts per pixel where its shape is 1)", SCAN),
    "com": ("px", "whole-pattern centre of mass (x, y) in detector pixels", SCAN + ("xy",)),
    "phase": ("", "class (base) index", SCAN),
    "probabilities": ("", "class probabilities, last axis over bases", SCAN + ("class",)),
    "bases": ("px", "learned base reciprocal bases (K, 2, 2), columns g1, g2", ("class", "xy", "vector")),
    "loss": ("", "training cycle loss per epoch", ("epoch",)),
    "virtual_bf": ("counts", "virtual bright field: counts within the disk radius of each pattern's central beam",
                   SCAN),
    "virtual_df": ("counts", "virtual annular dark field: counts beyond 1.5 disk radii of each pattern's central beam",
                   SCAN),
    "mean_pattern": ("counts", "mean diffraction pattern", ("qy", "qx")),
    "max_pattern": ("counts", "largest count of every detector pixel over the scan", ("qy", "qx")),
    "bragg_vector_map": ("count", "fitted reflections h g1 + k g2 (|h|, |k| <= 2) of every valid pattern, about the "
                                  "detector centre", ("qy", "qx")),
    "reference": ("", "reference region (unstrained lattice): the positions whose mean lattice is the reference "
                      "(less outliers)", SCAN),
}


#: Dimension names in the results store: per window, per frame and type.
WINDOWS = ("frame", "window_y", "window_x")
PER_TYPE = ("frame", "type")
#: Units, description and dimension names of every array of a domains store (domains.zarr).
DOMAIN_ARRAYS = {
    "centres": ("px", "window centres (y, x) in image pixels, shape (ny, nx, 2)", ("window_y", "window_x", "yx")),
    "segmentation": ("", "domain type of each window (0: domain-free, then stripe types by wall angle)", WINDOWS),
    "order": ("", "stripe order of the window spectrum over what noise alone gives (its 99.9 % quantile; "
              "for a faint window, of its 3x3 neighbourhood's pooled spectrum over that pooling's own null): "
              "at most 1 is domain-free", WINDOWS),
    "orientation": ("deg", "domain wall angle from +x towards +y (x along columns, y down rows), [-90, 90)", WINDOWS),
    "period": ("px", "stripe period (the fundamental's)", WINDOWS),
    "stretch": ("", "learned residual stretch of the pose (log_sx - log_sy)", WINDOWS),
    "shear": ("", "learned residual shear of the pose", WINDOWS),
    "error": ("", "reconstruction mean squared error of the window spectrum", WINDOWS),
    "content": ("", "content latents of each window, shape (T, ny, nx, latent)", WINDOWS + ("latent",)),
    "fractions": ("", "fraction of windows of each domain type per frame, shape (T, K)", PER_TYPE),
    "type_orientation": ("deg", "mean wall angle of each domain type per frame, shape (T, K)", PER_TYPE),
    "type_period": ("px", "median period of each domain type per frame, shape (T, K)", PER_TYPE),
    "series_orientation": ("deg", "mean wall angle of each domain type over all frames, shape (K,)", ("type",)),
    "series_period": ("px", "median period of each domain type over all frames, shape (K,)", ("type",)),
    "series_order": ("", "median stripe order of each domain type over all frames, shape (K,)", ("type",)),
}
