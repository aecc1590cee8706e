"""The documentation's code runs, and prints what it shows.

Pages: README.md and docs/*.md. On a docs page, every ```python block is part
of a program: the blocks of one ``## `` section (text before the first ``## ``
heading is a section too), in order, make one script. In README.md each
```python block is a program of its own (a reader copies one block of the
front page, not a section: each must run alone), named after the heading
above it (``## `` or ``### ``). Each program runs here in a fresh folder (with
an empty ``saved_models/``) on the backend under test. The README's first
program (the API in one screen) runs on every backend; every other program
(the README's export blocks, each docs page's) runs on one backend, chosen
from its id (``one_backend`` in tests/conftest.py).

A ```python block immediately followed by an ```output block (only blank
lines between them) must print that output: the stripped, non-empty lines of
the output block must appear as consecutive lines of the program's stdout
(compared stripped), each output block after the previous one. Use it only
for deterministic output (sorted log names, shapes, schedule values, rounded
formulas); anything else stays a ``# prints, e.g.`` comment.

Illustrative fragments (placeholders such as ``loss=...``, several GPUs,
files the reader brings) are tagged ```py and are not run. A ```python block
indented (inside a list) or an ```output block that follows no ```python
block is an error: the check would silently skip it.
"""

import dataclasses
import glob
import os
import re
import subprocess
import sys
import traceback

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))

_FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)\s*$")


@dataclasses.dataclass
class Block:
    lang: str
    text: str
    line: int          # 1-based line of the opening fence
    section: str
    follows_python: bool = False   # only blank lines since a ```python block
    heading: str = ""  # the nearest heading above (``## `` or ``### ``)


@dataclasses.dataclass
class Program:
    page: str
    section: str
    code: str = ""
    blocks: int = 0
    expected: list = dataclasses.field(default_factory=list)  # one list per output block

    @property
    def id(self):
        return f"{self.page}::{self.section}"


def parse(page):
    """(blocks, errors, python_fences) of one page.

    ``python_fences`` counts every ```python fence opened outside another
    block, indented or not: each must end up in a program.
    """
    lines = open(os.path.join(ROOT, page), encoding="utf-8").read().splitlines()
    blocks, errors = [], []
    section = heading = os.path.basename(page)
    fence = None          # (indent, backticks, lang, start line, content lines)
    last_python_end = None
    python_fences = 0
    for number, line in enumerate(lines, 1):
        if fence is not None:
            m = _FENCE.match(line)
            if m and not m.group(3) and len(m.group(2)) >= len(fence[1]):
                indent, ticks, lang, start, content = fence
                block = Block(lang, "\n".join(content) + "\n", start, section,
                              heading=heading)
                if lang == "output":
                    between = lines[last_python_end:start - 1] if last_python_end else None
                    block.follows_python = between is not None and all(
                        not text.strip() for text in between)
                if indent:
                    if lang == "python":
                        errors.append(f"{page}:{start}: an indented ```python block is "
                                      "not run; put it at column 0 or tag it ```py")
                else:
                    blocks.append(block)
                    if lang == "python":
                        last_python_end = number
                fence = None
            else:
                fence[4].append(line)
            continue
        m = _FENCE.match(line)
        if m:
            fence = (m.group(1), m.group(2), m.group(3), number, [])
            python_fences += m.group(3) == "python"
            continue
        if line.startswith("## "):
            section = heading = line[3:].strip()
        elif line.startswith("### "):
            heading = line[4:].strip()
        elif line.startswith("# ") and not blocks:
            section = heading = line[2:].strip()
    if fence is not None:
        errors.append(f"{page}:{fence[3]}: a code block is never closed")
    for block in blocks:
        if block.lang == "output" and not block.follows_python:
            errors.append(f"{page}:{block.line}: an ```output block must follow a "
                          "```python block directly")
    return blocks, errors, python_fences


def programs_of(page):
    """The programs of a page: one per ``## `` section on a docs page, one per
    block in README.md (a second block under one heading gets `` (2)``)."""
    blocks = parse(page)[0]
    programs = {}
    program = None
    for block in blocks:
        if block.lang == "python":
            if page == "README.md":
                name, n = block.heading, 1
                while name in programs:
                    n += 1
                    name = f"{block.heading} ({n})"
            else:
                name = block.section
            program = programs.setdefault(name, Program(page, name))
            program.code += f"# --- {page}:{block.line}\n{block.text}\n"
            program.blocks += 1
        elif block.lang == "output" and block.follows_python:
            lines = [text.strip() for text in block.text.splitlines() if text.strip()]
            program.expected.append(lines)
    return list(programs.values())


PROGRAMS = [program for page in PAGES for program in programs_of(page)]


def test_every_page_parses_cleanly():
    errors = [error for page in PAGES for error in parse(page)[1]]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_of_a_page_is_collected(page):
    python_fences = parse(page)[2]
    programs = programs_of(page)
    if python_fences:
        assert programs, f"{page} has ```python blocks but no collected program"
    assert sum(p.blocks for p in programs) == python_fences, (
        f"{page}: {python_fences} ```python blocks, "
        f"{sum(p.blocks for p in programs)} collected")


def test_the_docs_have_runnable_programs():
    pages = {program.page for program in PROGRAMS}
    assert "README.md" in pages
    assert len(PROGRAMS) >= 8, [program.id for program in PROGRAMS]


def test_each_readme_block_is_a_program_of_its_own():
    # A reader copies one block of the front page: each runs alone, with its
    # own imports and data (the blocks are not concatenated).
    python_fences = parse("README.md")[2]
    programs = programs_of("README.md")
    assert len(programs) == python_fences >= 3
    assert all(program.blocks == 1 for program in programs)
    assert len({program.id for program in programs}) == len(programs)
    for program in programs:
        assert "import " in program.code, program.id


def test_the_readme_shows_the_test_command():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert re.search(r"^```bash\nbash scripts/test\.sh\n```$", readme, re.M)


def _contains_in_order(actual, expected_blocks):
    """The first output block not found (consecutively, in order), or None."""
    position = 0
    for expected in expected_blocks:
        n = len(expected)
        for start in range(position, len(actual) - n + 1):
            if actual[start:start + n] == expected:
                position = start + n
                break
        else:
            return expected
    return None


# Programs whose backend is named rather than chosen from their id: the
# slowest under JAX's compiles run where they are cheapest.
BACKEND_OF = {
    "docs/objectives.md::Choosing an objective: `kd.search`": "torch",
    # Multi-stage feature methods: three objectives' first compiles.
    "docs/objectives.md::Multi-stage feature methods and CRD": "torch",
    # Exports int8 natively under TensorFlow (elsewhere through a subprocess).
    "docs/quantization.md::Distil, make the student quantization-aware, "
    "fine-tune, export": "tensorflow",
    # The README's two export blocks: native export, no converter subprocess.
    "README.md::Running the `.tflite` file": "tensorflow",
    "README.md::Int8: post-training, QAT or QAD": "tensorflow",
    # The KV-cache file: converted in-process under TensorFlow.
    "docs/language-models.md::The student on the phone with a KV cache "
    "(prefill and decode)": "tensorflow",
    # Measured 5-11 s faster under PyTorch than under their crc32 backend
    # (2026-12-07, docs/testing.md): small models, many short fits.
    "docs/objectives.md::Teacher-free, multi-level and curriculum-temperature "
    "logits; mutual learning and chains": "torch",
    "docs/language-models.md::Memory: token-chunked logits": "torch",
    "docs/cli.md::The building blocks, from Python": "torch",
    "docs/language-models.md::Token-level distillation with padding": "torch",
    "docs/language-models.md::On-policy distillation (GKD)": "torch",
    "docs/calibration.md::The measures, by hand": "torch",
}


# The README's programs that run on every backend: the front page's promise
# that the API works on each. Its other blocks run one small export each
# (the export itself is tested on every backend in tests/test_export.py).
README_ON_EVERY_BACKEND = ("README.md::The API in one screen",)


def _params(programs):
    """The README's API program runs on every backend (the front page's
    promise); every other program on one (tests/conftest.py,
    ``one_backend``)."""
    def marks(program):
        if program.id in README_ON_EVERY_BACKEND:
            return ()
        named = BACKEND_OF.get(program.id)
        return pytest.mark.one_backend(named) if named else pytest.mark.one_backend
    return [pytest.param(program, id=program.id, marks=marks(program))
            for program in programs]


# A program that changes what a process keeps (the dtype policy, a
# distribution, environment variables, devices, NumPy's print options) runs
# in a fresh Python process. The README's programs do too: a reader copies one
# block of the front page into an empty file. Every other program runs in the
# test's own process, which has Keras and the backend imported already (5 to
# 8 s saved per program), after `keras.backend.clear_session()` (fresh layer
# names, as in a new process), in its own folder and namespace.
FRESH_PROCESS_IF = ("set_dtype_policy", "distribution", "os.environ",
                    "tf.config", "jax.config", "torch.set_", "sys.argv",
                    "set_printoptions", "set_floatx", "keras.config.")


def needs_fresh_process(program):
    """Whether ``program`` runs in a subprocess of its own (see above)."""
    return program.page == "README.md" or any(
        marker in program.code for marker in FRESH_PROCESS_IF)


def _run_fresh(script, tmp_path):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(),
               PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                            env=env, capture_output=True, text=True,
                            timeout=600)
    return result.returncode == 0, result.stdout, result.stderr


def _run_here(script, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(sys, "path", [ROOT] + sys.path)
    keras.backend.clear_session()
    capfd.readouterr()
    namespace = {"__name__": "__main__", "__file__": str(script)}
    error = ""
    try:
        exec(compile(script.read_text(encoding="utf-8"), str(script), "exec"),
             namespace)
    except BaseException:  # noqa: BLE001 - reported as the program's failure
        error = traceback.format_exc()
    finally:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
        namespace.clear()
        keras.backend.clear_session()
    captured = capfd.readouterr()
    return not error, captured.out, captured.err[-2000:] + error


@pytest.mark.parametrize("program", _params(PROGRAMS))
def test_docs_program_runs_and_prints_its_output(program, tmp_path,
                                                 monkeypatch, capfd):
    script = tmp_path / "snippet.py"
    script.write_text(program.code, encoding="utf-8")
    os.makedirs(tmp_path / "saved_models", exist_ok=True)
    if needs_fresh_process(program):
        ok, stdout, stderr = _run_fresh(script, tmp_path)
    else:
        ok, stdout, stderr = _run_here(script, tmp_path, monkeypatch, capfd)
    assert ok, f"{program.id} failed:\n{stderr[-4000:]}"
    actual = [line.strip() for line in stdout.splitlines()]
    missing = _contains_in_order(actual, program.expected)
    assert missing is None, (
        f"{program.id}: the output block\n  " + "\n  ".join(missing)
        + "\nis not printed (in order); stdout was:\n" + stdout[-4000:])


def test_each_docs_program_runs_under_exactly_one_backend_and_the_readme_api_under_all():
    from tests.conftest import BACKENDS, assigned_backend, marked_backend

    ids = [param.values[0].id for param in _params(PROGRAMS)]
    for name in README_ON_EVERY_BACKEND:
        assert name in ids, f"{name} is no README program (heading renamed?)"
    for name in BACKEND_OF:
        assert name in ids, f"{name} is no docs program (heading renamed?)"
    for param in _params(PROGRAMS):
        program = param.values[0]
        marks = [m for m in param.marks if m.name == "one_backend"]
        if program.id in README_ON_EVERY_BACKEND:
            assert not marks, program.id
            continue
        assert len(marks) == 1, program.id
        nodeid = ("tests/test_docs.py::test_docs_program_runs_and_prints_its_"
                  f"output[{program.id}]")
        assert marked_backend(marks[0].mark, nodeid) in BACKENDS, program.id
    # The id-chosen backend is crc32 of the test id, modulo 3.
    assert assigned_backend("a") == BACKENDS[0xE8B7BE43 % 3] == "tensorflow"
