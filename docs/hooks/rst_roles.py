"""A Griffe extension: docstring markup the Google-style parser does not read, made readable.

1. Sphinx roles become cross-references (below).
2. An ``Args:`` line naming several parameters (``stride, padding: as in conv_transpose``)
   becomes one line per parameter with the same description, so each is checked against
   the signature (an unknown name stays a strict-mode warning).

The docstrings are Google style with Sphinx roles (``:func:`jaxdeconv.conv_transpose```,
``:class:`~pathlib.Path```). Each role becomes an *optional* autorefs link: a link where
the target is documented on the site, plain code where it is not (another library, a
private module), so the strict build neither shows raw roles nor warns about them. A
name without a dot is looked up in the docstring's own module first.
"""

from __future__ import annotations

import html
import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|obj|exc|const):`(~?)([^`<>]+)`")


def _replace(module: str, text: str) -> str:
    def sub(m: re.Match) -> str:
        short, target = m.group(1) == "~", m.group(2).strip()
        identifier = target if "." in target else f"{module}.{target}"
        title = target.rsplit(".", 1)[-1] if short else target
        return (
            f'<autoref identifier="{html.escape(identifier)}" optional>'
            f"<code>{html.escape(title)}</code></autoref>"
        )

    return ROLE.sub(sub, text)


SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Keyword Args|Keyword Arguments):\s*$")
MULTI = re.compile(r"^(\s+)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(\s*\([^)]*\))?:(.*)$")


def _split_multi_params(text: str) -> str:
    lines, out, i, section_indent = text.split("\n"), [], 0, None
    while i < len(lines):
        line = lines[i]
        if m := SECTION.match(line):
            section_indent = len(m.group(1))
        elif (
            line.strip()
            and section_indent is not None
            and len(line) - len(line.lstrip()) <= section_indent
        ):
            section_indent = None
        m = MULTI.match(line) if section_indent is not None else None
        if m is None:
            out.append(line)
            i += 1
            continue
        indent, names, kind, desc = m.group(1), m.group(2), m.group(3) or "", m.group(4)
        body = []
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            i -= 1
            body.pop()
        for name in (n.strip() for n in names.split(",")):
            out.append(f"{indent}{name}{kind}:{desc}")
            out.extend(body)
    return "\n".join(out)


class RstRoles(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            text = _split_multi_params(obj.docstring.value)
            obj.docstring.value = _replace(obj.module.path, text)
