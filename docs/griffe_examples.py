"""A griffe extension for the API reference (``mkdocs.yml``, ``docs/api.md``).

keras-kd's docstrings write their ``Example:`` section doctest style, at the
docstring's own indentation, so that pytest runs them (``--doctest-modules``).
Google-style parsing expects a section's content indented under its title;
without this, the examples would render as running text. This indents the
content of an unindented ``Example:`` / ``Examples:`` section, up to the next
section title, and names it ``Examples:`` (griffe's section for doctests;
``Example:`` would be an admonition of Markdown text), so that mkdocstrings
renders the examples as code.
"""

import re

import griffe

_TITLE = re.compile(r"^(Examples?):\s*$")
_NEXT_SECTION = re.compile(
    r"^(Args|Arguments|Attributes|Note|Notes|Raises|References|Returns|"
    r"See Also|Warning|Warnings|Yields|Examples?):\s*$")


def indent_examples(text):
    """``text`` with the content of unindented example sections indented."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not _TITLE.match(line):
            out.append(line)
            continue
        out.append("Examples:")
        while i < len(lines) and not lines[i].strip():
            i += 1                       # the blank line after the title
        while i < len(lines) and not _NEXT_SECTION.match(lines[i]):
            out.append("    " + lines[i] if lines[i].strip() else "")
            i += 1
    return "\n".join(out)


class DoctestExamples(griffe.Extension):
    """Indents doctest-style example sections before they are parsed."""

    def on_object(self, *, obj, **kwargs):
        docstring = obj.docstring
        if docstring is not None and re.search(r"^Examples?:\s*$",
                                               docstring.value, re.M):
            docstring.value = indent_examples(docstring.value)
