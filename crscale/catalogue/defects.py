"""Persistent detector defects from the CR masks of many exposures: the statistics.

A cosmic ray hits a given pixel of a detector at random: over ``N`` exposures the number of
times a CR-free pixel is masked is binomial, ``k ~ B(N, p)``, with ``p`` the detector's CR
pixel fraction (the share of its pixels the masks cover in an average exposure). A hot pixel
or a bad column is masked in most exposures. A pixel is a **defect** when

    P(K >= k | N, p) <= false_alarm / n_pixels,

so that the chance of calling even one CR-only pixel of the detector a defect is at most
``false_alarm`` (a Bonferroni bound over the detector's pixels; default 10⁻³ per detector
map). ``p`` is estimated robustly: the pooled mask fraction, re-estimated twice with the
flagged pixels left out, so that the defects themselves do not raise it.

**Hot columns and rows.** A column defect is often masked only in some exposures, or only
along part of its length. A pixel whose count reaches the looser level ``line_alpha``
(default 10⁻³, and at least 2 masks) is a *line candidate*; a run of at least
``line_min_length`` (default 5) candidates along one column (row) is a hot column (row). Were
the pixels independent, chance runs would number ``n_pixels x line_alpha ** line_min_length``;
they are not (one CR track covers neighbouring pixels, so their counts go up together), which
is why ``line_alpha`` is 10⁻³ rather than the 1 % the independent bound would allow: at 1 %,
2,100 exposures of a 512² detector with real ITL footprints gave 16 false hot-row pixels, at
10⁻³ none (``benchmarks/defect_reduction.py``).

**Too few exposures.** While even a pixel masked in every exposure would pass the test by
chance (``p ** N > false_alarm / n_pixels``), or ``N < min_exposures``, the map is
``unverified``: nothing can be told apart, and the catalogue marks the rows that a defect
could explain (kind ``unverified``) instead of calling them CRs.

Codes of the map (uint8): :data:`DEFECT_CODES`. A user-supplied bad-pixel map (or one made
from a dark or bias frame with :func:`map_from_calibration`) adds code 5 where the statistics
found nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage, stats

from crscale import config
from crscale.errors import SettingsError

#: Map code -> catalogue kind. 0 is "no defect".
DEFECT_CODES: dict[int, str] = {
    1: "hot_pixel", 2: "hot_column", 3: "hot_row", 4: "persistent", 5: "bad_pixel"
}
#: Every value of the catalogue's ``kind`` column.
KINDS: tuple[str, ...] = ("cr", *DEFECT_CODES.values(), "unverified")
#: Kinds that count as defects (``n_defects``).
DEFECT_KINDS: tuple[str, ...] = tuple(DEFECT_CODES.values())
#: States of a detector's map.
VERIFIED, UNVERIFIED = "verified", "unverified"
#: Largest flagged cluster (pixels) still called a hot pixel; bigger ones are ``persistent``.
HOT_PIXEL_MAX = 4


@dataclass(frozen=True)
class DefectSettings:
    """Settings of the defect test (``crscale.defects`` in the config)."""

    # Defaults: crscale.yaml's defects section, the one place they are written.
    false_alarm: float = config.shipped("defects.false_alarm")
    min_exposures: int = config.shipped("defects.min_exposures")
    line_alpha: float = config.shipped("defects.line_alpha")
    line_min_length: int = config.shipped("defects.line_min_length")
    #: Share of a catalogued region's pixels on defects that makes the region a defect.
    region_fraction: float = config.shipped("defects.region_fraction")

    def __post_init__(self) -> None:
        if not 0 < self.false_alarm < 1 or not 0 < self.line_alpha < 1:
            raise SettingsError("defects: false_alarm and line_alpha must lie in (0, 1)")
        if self.min_exposures < 1 or self.line_min_length < 2:
            raise SettingsError("defects: min_exposures must be >= 1 and line_min_length >= 2")
        if not 0 < self.region_fraction <= 1:
            raise SettingsError("defects: region_fraction must lie in (0, 1]")

    @classmethod
    def from_config(cls) -> DefectSettings:
        """The settings under ``crscale.defects`` (defaults where not set)."""
        given = dict(config.get("defects") or {})
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(given) - names - {"enabled"})
        if unknown:
            raise SettingsError(f"crscale.defects: unknown setting(s) {', '.join(unknown)}")
        return cls(**{k: v for k, v in given.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


@dataclass
class DefectMap:
    """The defects of one detector.

    Attributes
    ----------
    codes : numpy.ndarray
        uint8 map, :data:`DEFECT_CODES` (0: none).
    status : str
        ``"verified"`` or ``"unverified"``.
    n_exposures : int
        Exposures reduced.
    p_cr : float
        Estimated chance that a CR-free pixel is masked in one exposure.
    k_min : int or None
        Masks a pixel needs to be a defect (None: no count suffices, unverified).
    k_line : int or None
        Masks a line candidate needs.
    """

    codes: np.ndarray
    status: str
    n_exposures: int
    p_cr: float
    k_min: int | None
    k_line: int | None

    def counts_by_kind(self) -> dict[str, int]:
        """Defect pixels of each kind."""
        found = np.bincount(self.codes.ravel(), minlength=max(DEFECT_CODES) + 1)
        return {kind: int(found[code]) for code, kind in DEFECT_CODES.items()}

    def digest(self) -> str:
        """SHA-256 of the codes and the status: what the catalogue depends on."""
        h = hashlib.sha256(self.status.encode())
        h.update(np.ascontiguousarray(self.codes, dtype=np.uint8).tobytes())
        return h.hexdigest()[:16]


def min_count(n: int, p: float, alpha: float) -> int | None:
    """Smallest ``k <= n`` with ``P(K >= k | n, p) <= alpha``, or None when there is none."""
    if n <= 0:
        return None
    if p <= 0:
        return 1
    ks = np.arange(1, n + 1)
    ok = np.flatnonzero(stats.binom.sf(ks - 1, n, p) <= alpha)
    return int(ks[ok[0]]) if ok.size else None


def estimate_p(counts: np.ndarray, n_exposures: int, *, flagged: np.ndarray | None = None) -> float:
    """CR pixel fraction per exposure from the counts, leaving out ``flagged`` pixels."""
    keep = np.ones(counts.shape, bool) if flagged is None else ~flagged
    n_keep = int(np.count_nonzero(keep))
    if n_keep == 0 or n_exposures <= 0:
        return 0.0
    total = float(counts[keep].sum(dtype=np.float64))
    return total / (n_keep * n_exposures)


def _runs(candidates: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Pixels in runs of at least ``length`` candidates along ``axis`` (0: a column)."""
    structure = np.zeros((length, 1) if axis == 0 else (1, length), bool)
    structure[...] = True
    # An opening keeps exactly the pixels covered by some full-length segment of candidates.
    return ndimage.binary_opening(candidates, structure=structure)


def find_defects(
    counts: np.ndarray, n_exposures: int, *, settings: DefectSettings | None = None
) -> DefectMap:
    """Classify a detector's pixels from how often each was masked.

    Parameters
    ----------
    counts : numpy.ndarray
        (y, x) integers: exposures in which each pixel was masked.
    n_exposures : int
        Exposures the counts are over.
    settings : DefectSettings, optional
        Default from the config.

    Returns
    -------
    DefectMap
    """
    settings = settings or DefectSettings.from_config()
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be 2-D, not shape {counts.shape}")
    n_pix = counts.size
    codes = np.zeros(counts.shape, np.uint8)
    p = estimate_p(counts, n_exposures)
    alpha_pix = settings.false_alarm / max(n_pix, 1)
    k_min = min_count(n_exposures, p, alpha_pix)
    if n_exposures < settings.min_exposures or k_min is None:
        return DefectMap(codes, UNVERIFIED, n_exposures, p, None, None)
    flagged = counts >= k_min
    for _ in range(2):  # the defects must not raise the CR rate they are tested against
        p = estimate_p(counts, n_exposures, flagged=flagged)
        k_min = min_count(n_exposures, p, alpha_pix) or n_exposures
        flagged = counts >= k_min
    k_line = max(2, min_count(n_exposures, p, settings.line_alpha) or n_exposures)
    candidates = counts >= k_line
    columns = _runs(candidates, settings.line_min_length, axis=0)
    rows = _runs(candidates, settings.line_min_length, axis=1) & ~columns
    codes[columns] = 2
    codes[rows] = 3
    single = flagged & ~columns & ~rows
    if single.any():
        lab, n = ndimage.label(single, structure=np.ones((3, 3), bool))
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        codes[single & (sizes[lab] <= HOT_PIXEL_MAX)] = 1
        codes[single & (sizes[lab] > HOT_PIXEL_MAX)] = 4
    return DefectMap(codes, VERIFIED, n_exposures, p, k_min, k_line)


def add_user_map(codes: np.ndarray, user: np.ndarray | None) -> np.ndarray:
    """Codes with the user's bad pixels (non-zero ``user``) as code 5 where nothing else was found."""
    if user is None:
        return codes
    if user.shape != codes.shape:
        raise SettingsError(f"bad-pixel map shape {user.shape} does not match the detector's {codes.shape}")
    return np.where((codes == 0) & (np.asarray(user) != 0), np.uint8(5), codes).astype(np.uint8)


def map_from_calibration(frame: np.ndarray, kind: str, *, n_sigma: float = 8.0) -> np.ndarray:
    """Bad pixels of a calibration frame: bool map.

    Parameters
    ----------
    frame : numpy.ndarray
        2-D frame.
    kind : {"bad_pixels", "dark", "bias"}
        ``bad_pixels``: non-zero is bad; ``dark``: pixels more than ``n_sigma`` robust
        standard deviations above the median (hot); ``bias``: more than ``n_sigma`` away on
        either side. Non-finite pixels are bad in all three.
    n_sigma : float
        Threshold of the dark and bias tests.
    """
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise SettingsError(f"a calibration frame must be 2-D, not shape {frame.shape}")
    if kind == "bad_pixels":
        return ~np.isfinite(frame) | (np.nan_to_num(frame) != 0)
    if kind not in ("dark", "bias"):
        raise SettingsError(f"calibration kind must be bad_pixels, dark or bias, not {kind!r}")
    values = frame.astype(np.float64)
    finite = np.isfinite(values)
    good = values[finite]
    if good.size == 0:
        return ~finite
    median = float(np.median(good))
    sigma = 1.4826 * float(np.median(np.abs(good - median))) or float(np.std(good)) or 1.0
    dev = np.where(finite, values - median, 0.0)
    bad = dev > n_sigma * sigma if kind == "dark" else np.abs(dev) > n_sigma * sigma
    return bad | ~finite


def region_kinds(
    codes: np.ndarray,
    offsets: np.ndarray,
    n_pixels: np.ndarray,
    morphology: np.ndarray,
    box_height: np.ndarray,
    box_width: np.ndarray,
    *,
    status: str | None,
    settings: DefectSettings,
) -> np.ndarray:
    """The ``kind`` of every catalogued region.

    Parameters
    ----------
    codes : numpy.ndarray
        Defect code of every pixel of the regions, grouped by region (``offsets``).
    offsets : numpy.ndarray
        Region ``i`` owns ``codes[offsets[i]:offsets[i + 1]]``.
    n_pixels, morphology, box_height, box_width : numpy.ndarray
        Per region: size, morphology class, bounding-box height and width.
    status : str
        The map's state; on an ``unverified`` detector, regions shaped like a defect (dots,
        and one-pixel-wide straight segments along a column or row) are ``unverified``.
    settings : DefectSettings
        ``region_fraction`` and ``line_min_length``.

    Returns
    -------
    numpy.ndarray
        object array of kinds.
    """
    n = int(n_pixels.size)
    kinds = np.full(n, "cr", dtype=object)
    if n == 0:
        return kinds
    comp = np.repeat(np.arange(n), np.diff(offsets))
    on_defect = np.bincount(comp, weights=(codes != 0).astype(np.float64), minlength=n)
    defect = on_defect >= settings.region_fraction * np.maximum(n_pixels, 1)
    if defect.any():
        # the most frequent non-zero code of each defect region
        table = np.zeros((n, max(DEFECT_CODES) + 1), np.int64)
        np.add.at(table, (comp, codes.astype(np.int64)), 1)
        table[:, 0] = -1
        best = table.argmax(axis=1)
        for code, kind in DEFECT_CODES.items():
            kinds[defect & (best == code)] = kind
    if status == UNVERIFIED:
        line = ((box_width == 1) & (box_height >= settings.line_min_length)) | (
            (box_height == 1) & (box_width >= settings.line_min_length)
        )
        looks = (np.asarray(morphology) == "dot") | line
        kinds[~defect & looks] = "unverified"
    return kinds

