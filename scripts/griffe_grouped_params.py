"""A griffe extension (mkdocs.yml loads it) for vggfeat's docstrings that document several parameters at once.

vggfeat's Google-style docstrings group parameters that share a meaning, `scales, flip, aggregate, l2: ...`,
sometimes with the list of names wrapped onto a second line. griffe takes a group as one parameter named
`scales, flip, aggregate, l2` (shown as written, which is what we want) but cannot parse a wrapped list;
this joins a wrapped list of names back onto one line before griffe parses the docstring.
"""

from __future__ import annotations

import re

import griffe

#: a line that is only names and commas, ending with a comma, followed by the rest of the names and a colon
_WRAPPED = re.compile(r"^(?P<indent>[ \t]+)(?P<names>\w+(?:,[ \t]*\w+)*,)[ \t]*\n[ \t]+(?P<rest>\w+(?:,[ \t]*\w+)*:)",
                      re.MULTILINE)


class GroupedParams(griffe.Extension):
    def on_instance(self, *, node, obj, agent, **kwargs):
        docstring = obj.docstring
        if docstring is not None and _WRAPPED.search(docstring.value):
            docstring.value = _WRAPPED.sub(r"\g<indent>\g<names> \g<rest>", docstring.value)
