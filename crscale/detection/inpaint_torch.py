"""Inpainting on the predictor's device: the methods of :mod:`crscale.detection.inpaint` in torch.

The same rules as the numpy/scipy reference, so that ``clean`` agrees with it and keeps the same
locality bounds (``INPAINT_RADIUS``):

- ``harmonic`` / ``biharmonic``: masked regions (4-connected) whose bounding box is at most
  ``LAPLACE_MAX_EXTENT`` pixels on a side and that touch a donor are solved; the rest go to the
  ``gaussian`` fill. Instead of one sparse direct solve, every region is solved by its own
  conjugate-gradient iteration (conjugate gradients on the normal equations for the
  biharmonic form), all regions batched in one vector with per-region scalars, to a fixed
  relative residual :data:`CG_TOLERANCE`. A region stops iterating when it has converged, so
  its values depend on its own pixels only: a block equals the whole image.
- ``gaussian``: normalised convolution with the same sigmas, floors and truncation, as
  separable convolutions of the whole block.
- ``median``: not implemented on the device; :func:`inpaint_tensor` raises ``NotImplementedError``
  and the caller runs the numpy reference on the host.

Region labels and bounding boxes come from a connected-components pass (hooking and pointer
jumping) over the compacted set of masked pixels, with no host round trip; the "small enough
to solve" decision is then exactly the reference's.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from crscale.detection.inpaint import (
    DEFAULT_INPAINT,
    GAUSSIAN_MIN_WEIGHT,
    GAUSSIAN_SIGMAS,
    GAUSSIAN_TRUNCATE,
    LAPLACE_MAX_EXTENT,
)

logger = logging.getLogger(__name__)

#: Relative residual (per region, ``||r|| / ||b||``) at which a region's solve stops.
CG_TOLERANCE = 1e-10
#: Iteration caps: a region of n unknowns needs at most n steps in exact arithmetic (n <= 576).
CG_MAX_ITER = {"harmonic": 1500, "biharmonic": 6000}
#: Convergence is checked (one device sync) every this many iterations.
CHECK_EVERY = 16
DEVICE_METHODS = ("gaussian", "harmonic", "biharmonic")

_BIG = torch.iinfo(torch.int64).max // 4


def _gaussian_radius(sigma: float) -> int:
    return int(GAUSSIAN_TRUNCATE * sigma + 0.5)


def dilate_cross(a: torch.Tensor) -> torch.Tensor:
    """4-connected binary dilation by one pixel (scipy's ``generate_binary_structure(2, 1)``)."""
    out = a.clone()
    out[1:] |= a[:-1]
    out[:-1] |= a[1:]
    out[:, 1:] |= a[:, :-1]
    out[:, :-1] |= a[:, 1:]
    return out


def _neighbours(flat: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the (up, down, left, right) neighbours of ``flat`` pixels, and in-image flags."""
    h, w = shape
    y, x = flat // w, flat % w
    ny = torch.stack([y - 1, y + 1, y, y], 1)
    nx = torch.stack([x, x, x - 1, x + 1], 1)
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    return torch.where(inside, ny * w + nx, 0), inside


def _compact(flat: torch.Tensor, size: int, nbs: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Neighbour table in compact indices (``len(flat)`` = none) of a pixel set given by ``flat``."""
    imap = torch.full((size,), flat.numel(), dtype=torch.int64, device=flat.device)
    imap[flat] = torch.arange(flat.numel(), device=flat.device)
    return torch.where(inside, imap[nbs], flat.numel())


def _roots(nb: torch.Tensor) -> torch.Tensor:
    """Connected components of a compact pixel set: each pixel's root (its region's smallest index).

    Hooking and pointer jumping (Shiloach–Vishkin style) on the 4-neighbour table ``nb``
    (``len(nb)`` marks no neighbour): O(log n) rounds of gathers and scatters, all on the device.
    """
    n = nb.shape[0]
    parent = torch.arange(n, device=nb.device)
    sentinel = torch.full((1,), n, dtype=parent.dtype, device=nb.device)
    nb_t = nb.t().reshape(-1)
    while True:
        g = torch.cat([parent, sentinel]).index_select(0, nb_t).view(4, -1)
        lowest = torch.minimum(torch.minimum(parent, torch.minimum(g[0], g[1])), torch.minimum(g[2], g[3]))
        new = torch.minimum(parent.scatter_reduce(0, parent, lowest, reduce="amin"), lowest)
        while True:
            jumped = new.index_select(0, new)
            if torch.equal(jumped, new):
                break
            new = jumped
        if torch.equal(new, parent):
            return parent
        parent = new


def _regions(
    flat: torch.Tensor, nb: torch.Tensor, width: int, touches: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel of a compact set: its region's root, the region's extent, and its donor contact."""
    root = _roots(nb)
    y, x = flat // width, flat % width
    n = flat.numel()

    def reduce(values: torch.Tensor, how: str) -> torch.Tensor:
        start = values.new_full((n,), _BIG if how == "amin" else -_BIG)
        return start.scatter_reduce(0, root, values, reduce=how).index_select(0, root)

    extent = torch.maximum(reduce(y, "amax") - reduce(y, "amin"), reduce(x, "amax") - reduce(x, "amin")) + 1
    return root, extent, reduce(touches.long(), "amax") > 0


def _region_sum(values: torch.Tensor, region: torch.Tensor, n_regions: int) -> torch.Tensor:
    return torch.zeros(n_regions, dtype=values.dtype, device=values.device).index_add_(0, region, values)


def _cg(apply, rhs: torch.Tensor, region: torch.Tensor, n_regions: int, max_iter: int) -> torch.Tensor:
    """Conjugate gradients for ``apply(u) = rhs``, one independent iteration per region.

    ``apply`` must be symmetric positive definite on each region's unknowns. A region freezes
    once its residual is below :data:`CG_TOLERANCE` of its right-hand side.
    """
    u = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = _region_sum(r * r, region, n_regions)
    target = (CG_TOLERANCE**2) * rr
    active = rr > target
    for it in range(max_iter):
        ap = apply(p)
        pap = _region_sum(p * ap, region, n_regions)
        alpha = torch.where(active & (pap > 0), rr / torch.where(pap > 0, pap, 1), 0)
        a = alpha.index_select(0, region)
        u += a * p
        r -= a * ap
        rr_new = _region_sum(r * r, region, n_regions)
        beta = torch.where(active, rr_new / torch.where(rr > 0, rr, 1), 0)
        p = r + beta.index_select(0, region) * p
        rr = torch.where(active, rr_new, rr)
        active = active & (rr > target)
        if (it + 1) % CHECK_EVERY == 0 and not bool(active.any()):
            break
    logger.debug("conjugate gradients: %d iterations over %d regions", it + 1, n_regions)
    return u


def _laplace(
    values: torch.Tensor, donor: torch.Tensor, mask: torch.Tensor, biharmonic: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solved values and the flat indices they belong to; the masked pixels not solved are left."""
    h, w = values.shape
    size = h * w
    coupled = mask | (donor & dilate_cross(mask)) if biharmonic else mask
    touches = donor & coupled if biharmonic else mask & dilate_cross(donor)
    flat = torch.nonzero(coupled.reshape(-1)).squeeze(1)
    nbs, inside = _neighbours(flat, (h, w))
    nb = _compact(flat, size, nbs, inside)
    label, extent, has_donor = _regions(flat, nb, w, touches.reshape(-1)[flat])
    on_mask = mask.reshape(-1)[flat]
    unknown = on_mask & (extent <= LAPLACE_MAX_EXTENT) & has_donor
    if not bool(unknown.any()):
        return values.new_empty(0), flat.new_empty(0)

    # Regions are indexed by their root; those without unknowns have a zero right-hand side.
    region, n_regions = label, flat.numel()
    donor_flat = donor.reshape(-1)
    vals_flat = torch.where(donor, values, 0).reshape(-1)
    unknown_dense = torch.zeros(size, dtype=torch.bool, device=values.device)
    unknown_dense[flat[unknown]] = True
    in_graph = inside & (donor_flat[nbs] | unknown_dense[nbs])
    degree = in_graph.sum(1).to(values.dtype)
    known_nb = (in_graph & donor_flat[nbs]).to(values.dtype) * vals_flat[nbs]
    pad = values.new_zeros(1)
    unk = unknown.to(values.dtype)

    # Neighbour-major, so that the four gathered neighbours are four contiguous rows
    # (index_select and row sums are much faster than fancy indexing on CPUs).
    nb_flat = nb.t().reshape(-1)

    def lap(u: torch.Tensor) -> torch.Tensor:
        # (D - A) on the graph; u is zero off the unknowns, so only unknown neighbours count.
        g = torch.cat([u, pad]).index_select(0, nb_flat).view(4, -1)
        return degree * u - ((g[0] + g[1]) + (g[2] + g[3]))

    if biharmonic:
        near_unknown = dilate_cross(unknown_dense.reshape(h, w)).reshape(-1)[flat]
        rows = (unknown | (donor_flat[flat] & near_unknown)).to(values.dtype)
        rhs = rows * (known_nb.sum(1) - degree * torch.where(donor_flat[flat], vals_flat[flat], 0))

        def apply(u: torch.Tensor) -> torch.Tensor:
            return unk * lap(rows * lap(unk * u))

        u = _cg(apply, unk * lap(rhs), region, n_regions, CG_MAX_ITER["biharmonic"])
    else:

        def apply(u: torch.Tensor) -> torch.Tensor:
            return unk * lap(unk * u)

        u = _cg(apply, unk * known_nb.sum(1), region, n_regions, CG_MAX_ITER["harmonic"])
    return u[unknown], flat[unknown]


def _weighted_sums(
    planes: torch.Tensor, targets: torch.Tensor, profile: torch.Tensor, radius: int
) -> torch.Tensor:
    """Kernel-weighted sums of the (2, H, W) ``planes`` at flat ``targets`` (zero outside the image).

    Gathered window by window when the targets are few, else one separable convolution of the
    whole plane, whichever moves fewer values; both give the same sums.
    """
    _, h, w = planes.shape
    taps = 2 * radius + 1
    if targets.numel() * taps * taps <= 4 * taps * h * w:
        padded = F.pad(planes, (radius, radius, radius, radius)).reshape(2, -1)
        ty, tx = targets // w, targets % w
        span = torch.arange(taps, device=planes.device)
        dy, dx = torch.meshgrid(span, span, indexing="ij")
        offsets = (dy * (w + 2 * radius) + dx).reshape(-1)
        kernel = torch.outer(profile, profile).reshape(-1)
        corner = ty * (w + 2 * radius) + tx
        sums = torch.empty((2, targets.numel()), dtype=planes.dtype, device=planes.device)
        step = max(1, (1 << 22) // offsets.numel())
        for start in range(0, targets.numel(), step):
            index = corner[start : start + step, None] + offsets
            sums[:, start : start + step] = padded[:, index] @ kernel
        return sums
    ky, kx = profile.view(1, 1, -1, 1), profile.view(1, 1, 1, -1)
    smooth = F.conv2d(F.conv2d(planes[:, None], ky, padding=(radius, 0)), kx, padding=(0, radius))
    return smooth[:, 0].reshape(2, -1)[:, targets]


def _gaussian(
    values: torch.Tensor, donor: torch.Tensor, targets: torch.Tensor, fallback: float
) -> torch.Tensor:
    """Normalised Gaussian convolution at the flat indices ``targets``, widest kernel last."""
    planes = torch.stack([torch.where(donor, values, 0), donor.to(values.dtype)])
    result = torch.full((targets.numel(),), float(fallback), dtype=values.dtype, device=values.device)
    todo = torch.arange(targets.numel(), device=values.device)
    for i, sigma in enumerate(GAUSSIAN_SIGMAS):
        radius = _gaussian_radius(sigma)
        taps = torch.arange(-radius, radius + 1, dtype=values.dtype, device=values.device)
        profile = torch.exp(-(taps**2) / (2.0 * sigma**2))
        num, den = _weighted_sums(planes, targets[todo], profile / profile.sum(), radius)
        floor = GAUSSIAN_MIN_WEIGHT if i + 1 < len(GAUSSIAN_SIGMAS) else 1e-12
        done = den >= floor
        result[todo[done]] = num[done] / den[done]
        todo = todo[~done]
        if todo.numel() == 0:
            break
    return result


def donor_median(values: torch.Tensor, donor: torch.Tensor) -> float:
    """The numpy median (mean of the two middle values) of the donor pixels; 0 when there are none."""
    good = values[donor]
    if good.numel() == 0:
        return 0.0
    ordered = torch.sort(good).values
    n = ordered.numel()
    return float(0.5 * (ordered[(n - 1) // 2] + ordered[n // 2]))


def inpaint_tensor(
    image: torch.Tensor,
    mask: torch.Tensor,
    *,
    method: str = DEFAULT_INPAINT,
    bad: torch.Tensor | None = None,
    fallback: float | None = None,
) -> torch.Tensor:
    """:func:`crscale.detection.inpaint.inpaint` for 2-D tensors, on their device.

    Parameters
    ----------
    image : torch.Tensor
        2-D image (any real dtype); solved in float64.
    mask : torch.Tensor
        bool, same shape: the pixels to replace.
    method : {"gaussian", "harmonic", "biharmonic"}
        See the module docs (``median`` is host-only).
    bad : torch.Tensor, optional
        bool: pixels that are never donors.
    fallback : float, optional
        Value for masked pixels with no donor within reach (default: the donors' median).

    Returns
    -------
    torch.Tensor
        float32 image; unmasked pixels equal ``image.float()``.

    Raises
    ------
    NotImplementedError
        For ``method="median"``.
    ValueError
        For an unknown method or mismatched shapes.
    """
    if method not in DEVICE_METHODS:
        if method == "median":
            raise NotImplementedError("the median inpainting runs on the host only")
        raise ValueError(f"unknown inpainting method {method!r}")
    if image.ndim != 2 or mask.shape != image.shape or (bad is not None and bad.shape != image.shape):
        raise ValueError(f"inpaint_tensor needs 2-D arrays of one shape, got {image.shape}, {mask.shape}")
    out = image.to(torch.float32).clone()
    if not bool(mask.any()):
        return out
    values = image.to(torch.float64)
    donor = torch.isfinite(values) & ~mask
    if bad is not None:
        donor &= ~bad
    fill = donor_median(values, donor) if fallback is None else float(fallback)
    flat_out = out.view(-1)
    masked = mask.reshape(-1)
    if method != "gaussian":
        solved, where = _laplace(values, donor, mask, method == "biharmonic")
        flat_out[where] = solved.to(torch.float32)
        masked = masked.clone()
        masked[where] = False
    targets = torch.nonzero(masked).squeeze(1)
    if targets.numel():
        flat_out[targets] = _gaussian(values, donor, targets, fill).to(torch.float32)
    return out
