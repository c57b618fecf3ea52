"""The documentation: its links, the generated CLI reference, and the commands it shows.

- every relative link of README.md, docs/*.md and cluster/README.md points to a file that
  exists, and every ``#anchor`` to a heading of that file (GitHub's anchor rules);
- docs/cli.md is what ``crscale.cli_reference.render()`` generates, and equals the real
  ``crscale COMMAND --help``;
- every ``crscale ...`` command line in their code blocks parses with the real parser;
- the cheap commands of the docs run, on a real archive, and print what the docs say
  (troubleshooting messages verbatim); the quickstart and the API examples run end to end
  (slow).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zarr

import crscale
from conftest import GMOS, SAMPLE
from crscale.cli import build_parser
from crscale.cli_reference import HELP_WIDTH, REGENERATE, help_text, render, subcommands

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DOC_FILES = sorted(
    p
    for p in [REPO / "README.md", REPO / "cluster" / "README.md", *DOCS.glob("*.md")]
    if p.exists()
)
TROUBLESHOOTING = DOCS / "troubleshooting.md"
# Pages whose code blocks show commands (docs/cli.md shows --help output, checked on its own).
COMMAND_DOCS = [p for p in DOC_FILES if p != DOCS / "cli.md"]
# Where the docs' example outputs were made: the test's own folders are written as these.
DOC_WORKDIR = "/tmp/ts"
DOC_SAMPLE = "/work/main/crscale/data/sample"

pytestmark = pytest.mark.timeout(600)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ---------------------------------------------------------------- Markdown helpers
_FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")


def split_markdown(text: str) -> tuple[str, list[tuple[str, int, list[str]]]]:
    """(the text with code blocks blanked, line numbers kept; [(lang, first line no., lines)])."""
    prose: list[str] = []
    blocks: list[tuple[str, int, list[str]]] = []
    fence = None
    for no, line in enumerate(text.splitlines(), start=1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            blocks.append((m.group(2).lower(), no + 1, []))
            prose.append("")
        elif fence is not None and line.strip().startswith(fence):
            fence = None
            prose.append("")
        elif fence is not None:
            blocks[-1][2].append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation but - and _ dropped, spaces -> -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in prose.splitlines():
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every inline link and image outside code."""
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    prose = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), prose)  # inline code
    return [(prose.count("\n", 0, m.start()) + 1, m.group(1)) for m in _LINK.finditer(prose)]


# ---------------------------------------------------------------- (a) links
@pytest.mark.parametrize("doc", DOC_FILES, ids=rel)
def test_relative_links_and_anchors_resolve(doc):
    cache: dict[Path, set[str]] = {}
    broken = []
    for line, target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{rel(doc)}:{line}: {target}: no such file {dest}")
            continue
        if anchor and dest.suffix == ".md":
            if dest not in cache:
                cache[dest] = anchors(dest)
            if anchor not in cache[dest]:
                broken.append(f"{rel(doc)}:{line}: {target}: no heading #{anchor} in {dest.name}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_checker_catches_a_broken_link_and_anchor(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text(
        "# Top `code` here: yes\n\n## 4.1 Exposure id\n\n```\n[x](inside-code.md)\n```\n"
        "[ok](#top-code-here-yes) [ok2](#41-exposure-id) [bad](#nope) [gone](missing.md) `[no](x.md)`\n"
        "[web](https://example.org/#x)\n"
    )
    found = [t for _, t in links(doc)]
    assert found == ["#top-code-here-yes", "#41-exposure-id", "#nope", "missing.md", "https://example.org/#x"]
    assert anchors(doc) == {"top-code-here-yes", "41-exposure-id"}


# ---------------------------------------------------------------- (b) the CLI reference
def test_cli_reference_is_up_to_date():
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    m = re.search(r"argparse of Python (\d+\.\d+)", page)
    here = ".".join(map(str, sys.version_info[:2]))
    if m and m.group(1) != here:
        pytest.skip(f"docs/cli.md was generated with Python {m.group(1)}'s argparse, whose help layout "
                    f"differs from Python {here}'s")
    assert page == render(), f"docs/cli.md is out of date with crscale/cli.py: run `{REGENERATE}`"


def test_cli_reference_covers_every_command():
    page = render()
    parser = build_parser()
    for name, sub in subcommands(parser).items():
        assert f"\n## crscale {name}\n" in page
        assert f"(#crscale-{name})" in page
        assert help_text(sub) in page
        for action in sub._actions:
            for option in action.option_strings:
                assert option in page, f"{option} of crscale {name} missing from the reference"


# ---------------------------------------------------------------- the API page's signatures
def _api_objects() -> dict:
    from crscale.catalogue.detector import catalogue_detector
    from crscale.catalogue.stats import exposure_rates, summarise
    from crscale.detection import get_predictor
    from crscale.engine import dask_client, detect_archive, ingest, run_pipeline
    from crscale.engine.catalogue_stage import catalogue_archive
    from crscale.evaluate import evaluate
    from crscale.io import catalogue_store as cs
    from crscale.models import load_model

    return {
        "detect": crscale.detect, "ingest": ingest, "detect_archive": detect_archive,
        "catalogue_archive": catalogue_archive, "run_pipeline": run_pipeline, "dask_client": dask_client,
        "read_table": cs.read_table, "read_table_dask": cs.read_table_dask, "rates_dataset": cs.rates_dataset,
        "export_table": cs.export_table, "catalogued_exposures": cs.catalogued_exposures,
        "summarise": summarise, "exposure_rates": exposure_rates, "catalogue_detector": catalogue_detector,
        "evaluate": evaluate, "load_model": load_model, "get_predictor": get_predictor,
        "Archive": crscale.io.Archive,
    }


def _param_names(text: str) -> list[tuple[str, bool]]:
    """(name, given with ``=``) of each parameter of a signature or call as written in the docs."""
    out, depth, part = [], 0, ""
    for ch in text + ",":
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            name = part.split("=")[0].strip().lstrip("*").strip()
            if name:
                out.append((name, "=" in part))
            part = ""
        else:
            part += ch
    return out


def test_api_page_signatures_match_the_code():
    prose, blocks = split_markdown((DOCS / "api.md").read_text(encoding="utf-8"))
    spans = [m.group(1) for m in re.finditer(r"`([^`]+)`", prose)]  # inline code
    spans += ["\n".join(lines) for lang, _, lines in blocks if lang == ""]  # signature blocks
    objects = _api_objects()
    checked, problems = set(), []
    for span in spans:
        m = re.fullmatch(r"\s*(?:[\w.]*\.)?(\w+)\((.*)\)(?:\s*->\s*\w+)?\s*", span, re.S)
        if not m:
            continue
        name, params = m.group(1), " ".join(m.group(2).split())
        if name not in objects or not params.strip():
            continue
        pairs = _param_names(params)
        written = [n for n, _ in pairs]
        real = [p for p in inspect.signature(objects[name]).parameters if p != "self"]
        checked.add(name)
        if "*" not in params:  # a call: its keyword names must exist
            extra = {n for n, keyword in pairs if keyword} - set(real)
        elif "..." in written:  # a signature cut short: its names must exist
            extra = set(written) - {"..."} - set(real)
        else:  # a whole signature: the same names in the same order
            extra = set()
            if written != real:
                problems.append(
                    f"{name}: docs/api.md says ({', '.join(written)}), the code has ({', '.join(real)})"
                )
        if extra:
            problems.append(f"{name}: no parameter(s) {sorted(extra)}")
    missing = {"detect", "ingest", "detect_archive", "catalogue_archive", "run_pipeline",
               "dask_client", "read_table", "evaluate"} - checked
    assert not missing, f"signatures not found in docs/api.md: {sorted(missing)}"
    assert not problems, "docs/api.md is out of date:\n" + "\n".join(problems)


# ---------------------------------------------------------------- (c) commands in the docs parse
_SHELL_LANGS = {"", "bash", "sh", "shell", "console", "text"}
_SEPARATORS = {"&&", "||", ";", "|", "&", "|&"}
_WRAPPERS = {"time", "exec", "nohup", "env"}
# A command line: crscale at its start or after && ; | (optionally after VAR=value or a wrapper).
_COMMAND_LINE = re.compile(
    r"(?:^|&&|\|\||;|\|)\s*(?:\w+=\S*\s+)*(?:(?:time|exec|nohup|env)\s+)?crscale(?:\s|$)"
)


def _substitute(line: str) -> str:
    """Placeholders and shell expansions replaced by plausible values."""
    line = line.replace("$(crscale sample-data)", str(SAMPLE))
    line = re.sub(r"\$\([^()]*\)", "x", line)
    values = {"S": str(SAMPLE), "PWD": str(REPO), "HOME": str(Path.home())}
    line = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), "x"), line)
    line = line.replace("<exposure>", "gmos")
    line = re.sub(r"<[A-Za-z][^<>\n]*>", "x", line)  # <your model>, <name> ...
    line = line.replace("[options]", "")
    line = re.sub(r"\[(--?[^\[\]]*)\]", r"\1", line)  # optional parts of a synopsis
    return line


def _segments(line: str) -> list[list[str]]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    tokens = list(lex)
    segments, current, skip = [], [], False
    for i, tok in enumerate(tokens):
        if skip:
            skip = False
            continue
        if tok in _SEPARATORS:
            segments.append(current)
            current = []
        elif set(tok) <= set("<>&") and ("<" in tok or ">" in tok):
            skip = True  # a redirection and its target
        elif tok.isdigit() and i + 1 < len(tokens) and tokens[i + 1][:1] in "<>":
            continue
        else:
            current.append(tok)
    segments.append(current)
    return segments


def doc_commands(path: Path) -> list[tuple[int, list[str]]]:
    """(line, argv) of every ``crscale`` command shown in the shell code blocks of ``path``."""
    _, blocks = split_markdown(path.read_text(encoding="utf-8"))
    out = []
    for lang, first, lines in blocks:
        if lang not in _SHELL_LANGS:
            continue
        logical: list[tuple[int, str]] = []
        pending, start, heredoc = "", None, None
        for no, raw in enumerate(lines, start=first):
            if heredoc is not None:
                if raw.strip() == heredoc:
                    heredoc = None
                continue
            start = no if start is None else start
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            text = pending + raw
            pending = ""
            logical.append((start, text))
            start = None
            m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", text)
            if m:
                heredoc = m.group(1)
        prompted = any(t.startswith("$ ") for _, t in logical)
        for no, text in logical:
            text = text.strip()
            if prompted:
                if not text.startswith("$ "):
                    continue  # output
                text = text[2:]
            if not _COMMAND_LINE.search(text):
                continue  # prose or output that mentions crscale
            try:
                segments = _segments(_substitute(text))
            except ValueError as exc:  # unbalanced quotes
                raise AssertionError(f"{rel(path)}:{no}: cannot split {text!r}: {exc}") from None
            for seg in segments:
                while seg and (re.match(r"^\w+=", seg[0]) or seg[0] in _WRAPPERS):
                    seg = seg[1:]
                if seg and seg[0] == "crscale":
                    out.append((no, seg[1:]))
    return out


def test_every_crscale_command_in_the_docs_parses():
    parser = build_parser()
    failures, n = [], 0
    for doc in COMMAND_DOCS:
        text = doc.read_text(encoding="utf-8")
        for line, argv in doc_commands(doc):
            n += 1
            err = io.StringIO()
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                    parser.parse_args(argv)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    msg = (err.getvalue().strip().splitlines() or [""])[-1]
                    if msg and msg in text:
                        continue  # a usage error shown on purpose, with its message as printed
                    failures.append(f"{rel(doc)}:{line}: crscale {shlex.join(argv)}\n    {msg}")
    assert n > 60, f"only {n} crscale commands found in the docs: the extractor is broken"
    assert not failures, "commands in the docs that crscale rejects:\n" + "\n".join(failures)


def test_every_subcommand_is_shown_in_the_docs():
    shown = {argv[0] for doc in COMMAND_DOCS for _, argv in doc_commands(doc) if argv}
    missing = set(subcommands(build_parser())) - shown
    assert not missing, f"subcommands never shown in a code block of the docs: {sorted(missing)}"


def test_command_extractor_handles_continuations_comments_and_output(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text(
        "```\n$ crscale ingest raw --archive a.zarr \\\n    --no-progress 2>&1 | tail -1   # note\n"
        "crscale archive /tmp/a.zarr\n$ S=$(crscale sample-data) && crscale info x.zarr -e <exposure>\n```\n"
        "```bash\ncrscale stats a.zarr > out.txt\npython - <<'PY'\ncrscale this is python\nPY\n```\n"
        "```python\ncrscale.detect(img)\n```\n"
    )
    got = [argv for _, argv in doc_commands(doc)]
    assert got == [
        ["ingest", "raw", "--archive", "a.zarr", "--no-progress"],
        ["info", "x.zarr", "-e", "gmos"],  # $(crscale sample-data) became the sample's path
        ["stats", "a.zarr"],
    ]
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["ingest", "raw", "--no-such-option"])


# ---------------------------------------------------------------- (d) the cheap commands run
def _env(home: Path) -> dict[str, str]:
    """The environment of the commands: an empty HOME, so no stray ~/.config/dask file applies."""
    env = dict(os.environ)
    env.update({"HOME": str(home), "COLUMNS": str(HELP_WIDTH + 2), "NO_COLOR": "1",
                "MPLCONFIGDIR": str(home / "mpl")})
    return env


def crscale_cmd(args, cwd: Path, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crscale.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def as_in_docs(text: str, workdir: Path) -> str:
    return text.replace(str(workdir), DOC_WORKDIR).replace(str(SAMPLE), DOC_SAMPLE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, client):
    """The troubleshooting page's folder: ``new.zarr`` ingested from gmos.fits and a junk file."""
    d = tmp_path_factory.mktemp("ts")
    (d / "home").mkdir()
    (d / "junk.fits").write_text("this is not a FITS file\n")
    res = crscale_cmd(["ingest", "junk.fits", GMOS, "--archive", "new.zarr", "--no-progress",
                       "--scheduler", client.scheduler.address], d, _env(d / "home"))
    assert res.returncode == 1, res.stdout + res.stderr
    zarr.open_group(str(d / "plain.zarr"), mode="w")  # a Zarr store that is not an archive
    shutil.copytree(d / "new.zarr", d / "newer.zarr")
    zarr.open_group(str(d / "newer.zarr"), mode="r+").attrs["crscale_format"] = "2.0"
    return d, res


# (arguments, exit status) whose stderr lines the troubleshooting page shows verbatim.
TROUBLESHOOTING_COMMANDS = [
    (["info", "/nonexistent.zarr"], 2),
    (["info", "plain.zarr"], 2),
    (["info", "newer.zarr"], 2),
    (["info", "new.zarr", "-e", "nope"], 2),
    (["detect", "new.zarr", "-e", "nope"], 2),
    (["catalogue", "new.zarr", "-e", "nope"], 2),
    (["detect", "new.zarr", "--scheduler", "nope.json"], 2),
    (["detect", "new.zarr", "--model", "nosuch"], 2),
    (["detect", "new.zarr", "--model", "nosuch.safetensors"], 2),
    (["export", "new.zarr", "crs.fits"], 2),
    (["run", "--archive", "new.zarr"], 2),
    (["train", "nosuch.yaml"], 2),
    (["evaluate", GMOS, "--out", "ev", "--baselines", "nosuch"], 2),
    (["ingest", "junk.fits", GMOS, "--dq", SAMPLE / "masks" / "gmos_crmask_reference.fits",
      "--archive", "new.zarr"], 2),
]


def _shipped(text: str) -> str:
    """The list of shipped models left out of a message: it grows with every model added."""
    return re.sub(r"shipped models: [^;\n]*;", "shipped models: ...;", text)


def _run_all(calls, cwd, env):
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda args: crscale_cmd(args, cwd, env), calls))


def test_troubleshooting_messages_are_what_crscale_prints(workdir):
    d, ingest_run = workdir
    page = TROUBLESHOOTING.read_text(encoding="utf-8")
    problems = []
    failed_lines = [ln.strip() for ln in ingest_run.stdout.splitlines() if "FAILED:" in ln]
    assert failed_lines and as_in_docs(failed_lines[0], d) in page, as_in_docs(failed_lines[0], d)
    results = _run_all([args for args, _ in TROUBLESHOOTING_COMMANDS], d, _env(d / "home"))
    for (args, status), res in zip(TROUBLESHOOTING_COMMANDS, results, strict=True):
        shown = as_in_docs("crscale " + " ".join(map(str, args)), d)
        if res.returncode != status:
            problems.append(f"{shown}: exit {res.returncode}, expected {status}: {res.stderr[-500:]}")
            continue
        message = as_in_docs(res.stderr.strip().splitlines()[-1], d)
        if _shipped(message) not in _shipped(page):
            problems.append(f"{shown}: prints\n    {message}\n  which docs/troubleshooting.md does not show")
    assert not problems, "\n".join(problems)


def test_cheap_doc_commands_run_on_a_real_archive(workdir):
    d, _ = workdir
    env = _env(d / "home")
    all_docs = "\n".join(p.read_text(encoding="utf-8") for p in DOC_FILES)
    for shown in ("crscale models", "crscale sample-data", "crscale --version", "crscale info demo.zarr",
                  "crscale info demo.zarr -e gmos"):
        assert shown in all_docs, f"{shown!r} is no longer shown in the docs"
    calls = [["models"], ["sample-data"], ["--version"], ["info", "new.zarr"],
             ["info", "new.zarr", "-e", "gmos"], ["info", "new.zarr", "--json"]]
    models, sample, version, info, detail, as_json = _run_all(calls, d, env)
    for res in (models, sample, version, info, detail, as_json):
        assert res.returncode == 0, res.stdout + res.stderr
    assert "crscale-default" in models.stdout and "(default)" in models.stdout
    assert Path(sample.stdout.strip()) == crscale.sample_data_dir()
    assert version.stdout.strip() == f"crscale {crscale.__version__}"
    assert "crscale archive" in info.stdout and "Failures: 1" in info.stdout
    assert "detector SCI: HDU 1 (EXTNAME='SCI', EXTVER=None), 150x200" in detail.stdout
    assert json.loads(as_json.stdout)["n_exposures"] == 1


def test_help_of_every_command_is_the_reference(tmp_path):
    """``COLUMNS=102 crscale X --help`` prints exactly the CLI reference's section."""
    parser = build_parser()
    names = list(subcommands(parser))
    results = _run_all([["--help"], *[[n, "--help"] for n in names]], tmp_path, _env(tmp_path))
    for args, res in zip([[], *[[n] for n in names]], results, strict=True):
        assert res.returncode == 0, res.stderr
        expected = help_text(subcommands(parser)[args[0]] if args else parser)
        assert res.stdout == expected, f"crscale {' '.join(args)} --help differs from the reference"


# ---------------------------------------------------------------- slow: the quickstart end to end
def _python_blocks(path: Path) -> list[str]:
    _, blocks = split_markdown(path.read_text(encoding="utf-8"))
    return ["\n".join(lines) + "\n" for lang, _, lines in blocks if lang == "python"]


@pytest.mark.slow
def test_quickstart_and_api_examples_run_end_to_end(tmp_path):
    env = _env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    quickstart = DOCS / "quickstart.md"
    text = quickstart.read_text(encoding="utf-8")
    commands = [argv for _, argv in doc_commands(quickstart)]
    assert commands[0][:2] == ["run", "--sample"], "the quickstart no longer starts with crscale run --sample"
    for argv in commands:
        res = crscale_cmd(argv, tmp_path, env, timeout=600)
        assert res.returncode == 0, f"crscale {shlex.join(argv)}:\n{res.stdout}\n{res.stderr}"
        if argv[:2] == ["run", "--sample"] and "--no-progress" not in argv:
            assert "6 ingested" in res.stdout and "6 exposure(s) done" in res.stdout
    # The Python scripts, under the names the page runs them with.
    scripts = re.findall(r"^\$ python (\S+\.py)$", text, re.M)
    blocks = _python_blocks(quickstart)
    assert len(scripts) == len(blocks) >= 2
    for name, code in zip(scripts, blocks, strict=True):
        (tmp_path / name).write_text(code)
        res = subprocess.run([sys.executable, name], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, f"{name}:\n{res.stdout}\n{res.stderr}"
        if name == "qs_detect.py":
            assert res.stdout.strip().endswith("True"), res.stdout  # the archive's mask, exactly
    # The API page's examples, in order, in the same folder (they read demo.zarr).
    for i, code in enumerate(_python_blocks(DOCS / "api.md")):
        script = tmp_path / f"api_{i:02d}.py"
        script.write_text(code)
        res = subprocess.run([sys.executable, script.name], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, f"docs/api.md example {i + 1}:\n{code}\n{res.stdout}\n{res.stderr}"
