"""The CR rate of each detector of an archive before and after the artefact work (issue #19).

"Before" counts every masked region as a CR, as crscale did before defects and the ``kind``
column existed; "raw" counts kind ``cr`` only; "corrected" divides that by the completeness
measured on the detector's own frames. Usage (after ``crscale run --sample --archive demo.zarr``)::

    python docs/figures/rates_before_after.py demo.zarr docs/figures/rates-before-after.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from crscale.io.catalogue_store import read_table


def main() -> None:
    """Read the exposure table, print the three rates per detector and plot them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive")
    parser.add_argument("png")
    args = parser.parse_args()
    t = read_table(args.archive, "exposures").sort_values(["instrument", "detector"])
    exposure = t["area_cm2"] * t["effective_exptime"]
    n_all = t["n_cr"] + t["n_defects"] + t["n_unverified"]
    series = [
        ("before: every masked region a CR", n_all / exposure, np.sqrt(n_all) / exposure, "0.6"),
        ("raw: kind cr only", t["rate"], t["rate_err"], "tab:blue"),
        ("completeness-corrected", t["rate_corrected"], t["rate_corrected_err"], "tab:red"),
    ]
    labels = [f"{i} {d}" if d not in ("PRIMARY", "SCI") else str(i)
              for i, d in zip(t["instrument"], t["detector"], strict=True)]
    y = np.arange(len(t))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(t) + 1.5))
    for k, (name, rate, err, colour) in enumerate(series):
        ax.errorbar(rate, y + (k - 1) * 0.22, xerr=err, fmt="o", color=colour, label=name, capsize=2)
        print(f"{name}: " + ", ".join(f"{lab} {r:.3f}±{e:.3f}"
                                       for lab, r, e in zip(labels, rate, err, strict=True)))
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("CR rate (cm$^{-2}$ s$^{-1}$)")
    ax.set_title("CR rate per detector, bundled sample: before and after defects and completeness")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="center right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
