"""Expanding inputs: files, directories, glob patterns, manifests, companion files."""

from __future__ import annotations

from conftest import DECAM, DECAM_DQ, IMAGES, MEF, SAAO, copy_to
from crscale.io.inputs import InputSpec, expand_inputs


def test_directory_is_searched_recursively_and_companions_are_paired(tmp_path):
    copy_to(MEF, tmp_path / "night1")
    copy_to(DECAM, tmp_path / "night2" / "deep")
    copy_to(DECAM_DQ, tmp_path / "night2" / "deep")
    (tmp_path / "night2" / "notes.txt").write_text("not an image")
    specs, problems = expand_inputs([str(tmp_path)])
    assert problems == []
    names = sorted(s.path.split("/")[-1] for s in specs)
    assert names == [DECAM.name, MEF.name]  # the DQ file is a companion, not an exposure
    decam = next(s for s in specs if s.path.endswith(DECAM.name))
    assert decam.dq_path.endswith(DECAM_DQ.name)


def test_glob_patterns_and_duplicates_named_twice(tmp_path):
    specs, problems = expand_inputs([str(IMAGES / "*.fits"), str(SAAO), str(tmp_path / "*.fz")])
    assert [p.problem for p in problems] == ["pattern matched no file"]
    paths = [s.path for s in specs]
    assert len(paths) == len(set(paths))  # SAAO named by the glob and by name: once
    assert str(SAAO) in paths


def test_manifest_with_dq_and_comments(tmp_path):
    manifest = tmp_path / "list.txt"
    manifest.write_text(
        "# tonight's files\n"
        f"{MEF}\n"
        f"{DECAM}   dq={DECAM_DQ}   # explicit DQ\n"
        "missing.fits\n"
        f"{SAAO} colour=blue\n"
    )
    specs, problems = expand_inputs([f"@{manifest}"])
    assert [s.path for s in specs] == [str(MEF), str(DECAM), str(SAAO)]
    assert specs[1].dq_path == str(DECAM_DQ)
    kinds = sorted(p.problem for p in problems)
    assert any("line 5" in k and "colour=blue" in k for k in kinds)
    assert any("does not exist" in k for k in kinds)
    # The same file is recognised as a manifest without the @ (a .txt that is not FITS).
    specs2, _ = expand_inputs([str(manifest)])
    assert [s.path for s in specs2] == [s.path for s in specs]


def test_missing_path_and_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    specs, problems = expand_inputs([str(tmp_path / "nope.fits"), str(tmp_path / "empty")])
    assert specs == []
    assert [p.kind for p in problems] == ["missing", "no-image"]


def test_input_spec_passes_through(tmp_path):
    specs, _ = expand_inputs([InputSpec(str(DECAM), str(DECAM_DQ))])
    assert specs == [InputSpec(str(DECAM), str(DECAM_DQ), None)]
