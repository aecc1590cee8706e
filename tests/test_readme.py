"""The README's runnable snippets run.

Every ```python block of the README is part of a program: the blocks of one
``## `` section, in order, make one script, run here in a fresh folder on the
backend under test. Illustrative fragments (placeholders such as ``loss=...``,
several GPUs, files the reader brings) are tagged ```py and are not run.
"""

import os
import re
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sections():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    programs = {}
    title = None
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        title = part.splitlines()[0].strip()
        code = re.findall(r"^```python\n(.*?)^```", part, re.S | re.M)
        if code:
            programs[title] = "\n".join(code)
    return programs


PROGRAMS = sections()


def test_the_readme_has_runnable_snippets():
    assert len(PROGRAMS) >= 5, sorted(PROGRAMS)


@pytest.mark.parametrize("title", sorted(PROGRAMS))
def test_readme_section_runs(title, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(PROGRAMS[title], encoding="utf-8")
    os.makedirs(tmp_path / "saved_models", exist_ok=True)
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(),
               PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3",
               MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                            env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (
        f"README section {title!r} failed:\n{result.stderr[-4000:]}")
