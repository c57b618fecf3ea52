"""What to do about a recorded failure, by its kind (the ``kind`` of a failure record)."""

from __future__ import annotations

from typing import Any

_ADVICE = {
    "corrupt": "Not a readable FITS file: fetch it again from its source, then re-run the same command.",
    "truncated": "The file is shorter than its headers say (a partial copy): copy it again, then re-run.",
    "missing": "The file (or its DQ / weight file) is not there: fix the path or the manifest, then re-run.",
    "no-image": "No 2-D image HDU in the file: leave it out of the inputs (a table or a spectrum cube?).",
    "no-finite-pixels": "Every pixel is NaN or inf: nothing to detect; leave it out of the inputs.",
    "dq-mismatch": "The DQ file does not match the image's detectors or shape: fix the dq= entry.",
    "changed": "The source file changed since it was ingested: re-ingest it with --force.",
    "invalid": "The input is not usable as it is: read the message, fix the file, then re-run.",
    "unreadable": "The worker could not read the file: check its permissions and the file system, re-run.",
    "lost": "The worker reading it died (memory?): re-run; give the workers more memory if it recurs.",
    "memory": "Out of memory: re-run with fewer threads per worker or more memory per worker.",
    "archive": "The archive could not be read or written there (disk full? permissions?): fix, then re-run.",
    "model": "The model could not be loaded: check --model and the weight files (crscale models).",
    "config": "A setting is wrong: check crscale's configuration (docs/troubleshooting.md), then re-run.",
    "internal": "An unexpected error in crscale: re-run; if it recurs, report it with the message.",
    "error": "The stage raised an error on this exposure: read the message; re-running redoes only it.",
}
_DEFAULT = "Read the message and docs/troubleshooting.md; a re-run redoes only what is not done."


def advice(record: dict[str, Any]) -> str:
    """One sentence on what to do about a failure record (``stage``, ``kind``, ``problem``)."""
    kind = str(record.get("kind") or "")
    text = _ADVICE.get(kind, _DEFAULT)
    stage = record.get("stage")
    if stage in ("detect", "catalogue") and kind in ("error", "archive"):
        text += f" (`crscale {stage} ARCHIVE -e {record.get('exposure_id') or 'ID'}` redoes one exposure.)"
    return text
