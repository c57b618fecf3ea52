from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from crscale.evaluate.report import format_table, format_targets, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMAGES = ("j8xi01abq_flt", "j8xi02bcq_flt", "ccd_ground_07")
N_CR = {"j8xi01abq_flt": 5210, "j8xi02bcq_flt": 4380, "ccd_ground_07": 812}
N_NEG = 3_000_000
FIGURES = ("tpr@fpr=1e-4", "tpr@fpr=1e-3", "precision@tpr=0.95")


def _precision(tpr: np.ndarray, fpr: np.ndarray) -> np.ndarray:
    tp = tpr * sum(N_CR.values())
    return tp / (tp + fpr * N_NEG)


def _score_curve(offset: float) -> dict:
    # Log-spaced FPR as the evaluator writes it, a smooth monotone TPR and the matching precision.
    fpr = np.logspace(-6, 0, 50)
    tpr = np.clip(offset + 0.08 * np.log10(fpr / 1e-6), 0, 1)
    return {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "precision": _precision(tpr, fpr).tolist(),
        "threshold": np.linspace(0.99, 0.01, 50).tolist(),
    }


def _score_method(label: str, threshold: float, base: float) -> dict:
    table = []
    for t in (0.05, 0.25, 0.5, 0.75, 0.95):
        tpr, precision = base + 0.03 * (1 - t), 0.6 + 0.35 * t
        f1 = 2 * tpr * precision / (tpr + precision)
        table.append(
            {
                "threshold": t,
                "tpr": tpr,
                "fpr": 1e-3 * (1 - t),
                "precision": precision,
                "f1": f1,
                "fdr": 1 - precision,
            }
        )
    per_image = {
        name: {
            "tpr@fpr=1e-4": base - 0.1 + 0.01 * i,
            "tpr@fpr=1e-3": base + 0.01 * i,
            "precision@tpr=0.95": 0.7,
            "f1": 0.9,
            "iou": 0.82,
            "fdr": 0.08,
            "tpr": base,
            "fpr": 2e-4,
            "n_cr_pixels": N_CR[name],
        }
        for i, name in enumerate(IMAGES)
    }
    return {
        "label": label,
        "kind": "score",
        "parameter": "threshold",
        "threshold": threshold,
        "tpr@fpr=1e-4": base - 0.08,
        "tpr@fpr=1e-3": base,
        "precision@tpr=0.95": 0.7123,
        "f1": 0.912,
        "iou": 0.838,
        "fdr": 0.061,
        "tpr": base - 0.02,
        "fpr": 1.5e-4,
        "precision": 0.939,
        "operating_points": {"tpr@fpr=1e-4": 0.97, "tpr@fpr=1e-3": 0.81, "precision@tpr=0.95": 0.32},
        "best_f1": {"threshold": threshold, "f1": 0.912},
        "n_pixels": N_NEG + sum(N_CR.values()),
        "n_cr_pixels": sum(N_CR.values()),
        "seconds": 12.5,
        "per_image": per_image,
        "threshold_table": table,
    }


def _sweep_method() -> dict:
    sigclips = [3.0, 3.5, 4.0, 4.5, 5.0, 6.0]
    per_image = {
        name: {
            "tpr@fpr=1e-4": None,
            "tpr@fpr=1e-3": None if name == "ccd_ground_07" else 0.8,
            "n_cr_pixels": N_CR[name],
            "precision@tpr=0.95": None,
            "f1": 0.7,
            "iou": 0.55,
            "fdr": 0.2,
            "tpr": 0.75,
            "fpr": 4e-4,
        }
        for name in IMAGES
    }
    table = [
        {
            "threshold": s,
            "tpr": 0.9 - 0.05 * k,
            "fpr": 3e-3 / (k + 1),
            "precision": 0.5 + 0.05 * k,
            "f1": 0.65,
            "fdr": 0.5 - 0.05 * k,
        }
        for k, s in enumerate(sigclips)
    ]
    return {
        "label": "astroscrappy",
        "kind": "sweep",
        "parameter": "sigclip",
        "threshold": 4.5,
        "tpr@fpr=1e-4": None,
        "tpr@fpr=1e-3": 0.832,
        "precision@tpr=0.95": None,
        "f1": 0.701,
        "iou": 0.54,
        "fdr": 0.25,
        "tpr": 0.75,
        "fpr": 1e-3,
        "precision": 0.66,
        "operating_points": {"tpr@fpr=1e-4": None, "tpr@fpr=1e-3": 4.0, "precision@tpr=0.95": None},
        "best_f1": {"threshold": 4.5, "f1": 0.701},
        "n_pixels": N_NEG + sum(N_CR.values()),
        "n_cr_pixels": sum(N_CR.values()),
        "seconds": 30.0,
        "per_image": per_image,
        "threshold_table": table,
    }


def _sweep_curve() -> dict:
    fpr = np.array([3e-3, 1.5e-3, 1e-3, 7.5e-4, 6e-4, 5e-4])
    tpr = np.array([0.9, 0.85, 0.832, 0.75, 0.7, 0.65])
    return {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "precision": _precision(tpr, fpr).tolist(),
        "threshold": [3.0, 3.5, 4.0, 4.5, 5.0, 6.0],
    }


def _inputs() -> tuple[dict, dict, dict]:
    metrics = {
        "crscale:crscale-default": _score_method("crscale crscale-default", 0.85, 0.96),
        "deepCR:ACS-WFC": _score_method("deepCR ACS-WFC", 0.5, 0.91),
        "astroscrappy": _sweep_method(),
    }
    metrics["deepCR:ACS-WFC"]["precision@tpr=0.95"] = float("nan")  # must come out as null / "–"
    curves = {
        "crscale:crscale-default": _score_curve(0.55),
        "deepCR:ACS-WFC": _score_curve(0.45),
        "astroscrappy": _sweep_curve(),
    }
    run = {
        "command": "crscale evaluate data/sample --methods crscale,deepCR,astroscrappy -o report",
        "created": "2025-03-14T10:00:00+00:00",
        "crscale_version": "0.4.0",
        "data": {
            "mode": "masks",
            "n_images": 3,
            "n_pixels": N_NEG + sum(N_CR.values()),
            "n_cr_pixels": sum(N_CR.values()),
            "dilate": True,
            "cr_rate": None,
            "repeats": None,
            "seed": None,
            "footprints": "labelled",
        },
        "images": [
            {
                "name": n,
                "path": f"data/{n}.fits",
                "mask": f"data/{n}_mask.fits",
                "source": "deepCR",
                "shape": [1024, 1024],
                "n_pixels": 1_000_000,
                "n_cr_pixels": N_CR[n],
                "gain": 1.5,
                "readnoise_e": 4.2,
            }
            for n in IMAGES
        ],
        "skipped": [{"method": "Cosmic-CoNN:ground_imaging", "problem": "cosmic_conn is not installed"}],
        "settings": {
            "objlim": 4.0,
            "sigfrac": 0.3,
            "sigclips": [3.0, 3.5, 4.0, 4.5, 5.0, 6.0],
            "dilate": True,
        },
        "default_model": "crscale:crscale-default",
        "targets": [
            {
                "text": "crscale:crscale-default TPR at 0.1 % FPR >= 0.95",
                "value": 0.96,
                "goal": 0.95,
                "met": True,
            },
            {
                "text": "crscale:crscale-default precision at 95 % TPR >= 0.8",
                "value": 0.7123,
                "goal": 0.8,
                "met": False,
            },
        ],
    }
    return metrics, curves, run


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    metrics, curves, run = _inputs()
    given = copy.deepcopy((metrics, curves, run))
    out = tmp_path_factory.mktemp("report") / "nested" / "eval"
    written = write_report(out, metrics, curves, run)
    return out, written, (metrics, curves, run), given


def test_write_report_writes_every_file(report):
    out, written, _, _ = report
    assert [p.name for p in written] == [
        "metrics.json",
        "curves.json",
        "run.json",
        "roc.png",
        "precision_recall.png",
        "tpr_per_image.png",
        "threshold_scan.png",
        "report.md",
    ]
    for path in written:
        assert path.parent == out and path.is_file()
        if path.suffix == ".png":
            data = path.read_bytes()
            assert data[:8] == PNG_MAGIC
            assert len(data) > 10_000


def test_inputs_left_alone(report):
    _, _, used, given = report
    # NaN != NaN, so compare the JSON text with NaN allowed.
    assert json.dumps(used) == json.dumps(given)


def test_json_round_trip_with_nan_as_null(report):
    out, _, (metrics, curves, run), _ = report
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    expected = copy.deepcopy(metrics)
    expected["deepCR:ACS-WFC"]["precision@tpr=0.95"] = None
    assert loaded == expected
    assert list(loaded) == list(metrics)
    assert list(loaded["astroscrappy"]) == list(metrics["astroscrappy"])
    assert json.loads((out / "curves.json").read_text()) == curves
    assert json.loads((out / "run.json").read_text()) == run


def test_report_markdown(report):
    out, _, (metrics, _, run), _ = report
    text = (out / "report.md").read_text(encoding="utf-8")
    assert run["command"] in text and "```" in text
    for name in metrics:
        assert name in text
    # Sweeps name the parameter where each curve figure is reached.
    assert "0.832 (sigclip 4.0)" in text
    assert "sigclip 4.5" in text
    assert "| deepCR:ACS-WFC | 0.830 | 0.910 | – | 0.912 | 0.838 | 0.061 | 0.500 |" in text
    for image in IMAGES:
        assert f"| {image} | {N_CR[image]:,} |" in text
    assert "| ccd_ground_07 | 812 | 0.980 | 0.930 | – |" in text
    assert "✅ met" in text and "❌ NOT met" in text
    assert "Cosmic-CoNN:ground_imaging: cosmic_conn is not installed" in text
    for png in ("roc.png", "precision_recall.png", "tpr_per_image.png", "threshold_scan.png"):
        assert f"]({png})" in text
    assert "![ROC](roc.png)" in text


def test_format_table():
    metrics, _, _ = _inputs()
    lines = format_table(metrics).splitlines()
    assert len(lines) == 2 + len(metrics)
    assert lines[0].split()[:3] == ["method", "TPR@0.01%FPR", "TPR@0.1%FPR"]
    assert set(lines[1]) <= {"-", " "}
    for line, name in zip(lines[2:], metrics, strict=True):
        assert line.startswith(name + " ")
    assert len({len(line) for line in lines}) == 1  # aligned: right-aligned numbers end together
    assert "0.832 (sigclip 4.0)" in lines[4] and "–" in lines[4]
    assert "–" in lines[3]  # the NaN


def test_format_targets():
    _, _, run = _inputs()
    lines = format_targets(run).splitlines()
    assert lines == [
        "target met: crscale:crscale-default TPR at 0.1 % FPR = 0.9600 (goal >= 0.950)",
        "target NOT met: crscale:crscale-default precision at 95 % TPR = 0.7123 (goal >= 0.800)",
    ]
    only_text = {"targets": [{"text": "FDR below 5 %", "goal": None, "value": None, "met": False}]}
    assert format_targets(only_text) == "target NOT met: FDR below 5 %"
    assert format_targets({"targets": []}) == ""
    assert format_targets({}) == ""


def test_no_score_method_skips_threshold_scan(tmp_path):
    metrics, curves, run = _inputs()
    metrics = {"astroscrappy": metrics["astroscrappy"]}
    curves = {"astroscrappy": curves["astroscrappy"]}
    run["targets"], run["skipped"] = [], []
    written = write_report(tmp_path, metrics, curves, run)
    names = {p.name for p in written}
    assert "threshold_scan.png" not in names and not (tmp_path / "threshold_scan.png").exists()
    assert {"roc.png", "precision_recall.png", "tpr_per_image.png", "report.md"} <= names
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "threshold_scan.png" not in text and "## Targets" not in text
    assert not math.isnan(json.loads((tmp_path / "metrics.json").read_text())["astroscrappy"]["f1"])


def test_empty_inputs(tmp_path):
    written = write_report(tmp_path / "empty", {}, {}, {})
    assert [p.name for p in written] == [
        "metrics.json",
        "curves.json",
        "run.json",
        "roc.png",
        "precision_recall.png",
        "tpr_per_image.png",
        "report.md",
    ]
    assert json.loads((tmp_path / "empty" / "metrics.json").read_text()) == {}
    assert len(format_table({}).splitlines()) == 2
