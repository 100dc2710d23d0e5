"""Lazy brace notation (WebDataset's `shards/{00000..00999}.tar`): count, walk and resolve the names of a
brace pattern without ever building the list of them.

The names and their order are those of `vggfeat.shards.expand_braces` (the reference): the leftmost brace
varies slowest; `{a..b}` is a range of integers, spelt with the width of `a` when `a` starts with 0 (after
an optional `-`), as `str(n).zfill(width)` (so `{-05..05}` gives `-5 ... -1 00 01 ... 05`); `{x,y}` is a
list (empty items and repeats are kept: `{a,}` gives `a` and the empty string; `{a,a}` gives `a`
twice); a `{...}` that is neither (`{x}`, `{}`, `{1..a}`) is plain text, as is a lone `{` or `}`. Only
difference: there is no limit on the size of a range here (`count` says it; the caller decides), so
`{0..999999999}` is a billion names.

API (every function parses the pattern itself; a parse is cached):

- `has_braces(pattern) -> bool`: whether the pattern holds a brace that expands (a range or a list).
- `count(pattern) -> int`: the number of names, without expanding them.
- `iter_names(pattern) -> iterator of str`: the names, in order, one at a time (memory O(pattern)).
- `name_at(pattern, i) -> str`: the name at index `i` (`0 <= i < count`, or negative from the end, as a
  list's); `IndexError` outside.
- `index_of(pattern, name) -> list of int`: every index whose name is exactly `name`, ascending (several
  when list items repeat or are ambiguous, e.g. `{a,ab}{b,}`; empty when the pattern does not name it).
- `split_name(name) -> (folder, file)`: the folder is everything up to and including the last `/` (`""`
  when there is none; a scheme and host are left as they are): `s3://b/x/1.tar -> ("s3://b/x/", "1.tar")`,
  `/d/1.tar -> ("/d/", "1.tar")`, `1.tar -> ("", "1.tar")`; `folder + file == name` always.
- `resolve(pattern, list_folder) -> list`: which names exist, in order, in O(existing names + listed
  entries + folders) time and memory, never O(count). `list_folder(folder)` is the caller's: it gets a
  folder as `split_name` spells it (`""`: the current directory; `"s3://bucket/x/"`...) and returns the file
  names in it (an iterable of str; `None` or empty when the folder does not exist); it is called at most
  once per distinct folder, in order of first appearance. The result is a list of items in index order:
  `("shard", name)` for a name whose file is listed in its folder, and
  `("missing", first_name, last_name, n)` for each maximal run of `n >= 1` consecutive names that are not.
  A name exists when its exact spelling is listed: a listed `7.tar` does not stand for `{00..09}.tar`'s
  `07.tar`, nor `12.tar` for `{0..9}.tar`. A pattern of which no name exists resolves to the one item
  `[("missing", name_at(p, 0), name_at(p, -1), count(p))]` (`none_exists(items)` tells it).
  Braces before the last `/` (in folders) are expanded eagerly: more than `MAX_FOLDERS` combinations of
  them is an `InputError`; braces in the file name are matched against each listing, never expanded.
- `none_exists(items) -> bool`: True when `resolve` found no name.

Errors: `InputError` (from `vggfeat.errors`), one line, from every function that parses (`count`,
`iter_names` at the call, `name_at`, `index_of`, `resolve`): a range that goes downwards, with the
message of `expand_braces`, `brace range {5..1} in PATTERN goes downwards; write {1..5}` (PATTERN: the
whole pattern, where `expand_braces` names the text after the previous brace); a range bound of more than
1000 digits; and from `resolve`, more than `MAX_FOLDERS` folder combinations. Nothing else is raised for a
str pattern (`TypeError` for another type), besides what `list_folder` raises (passed on as it is).

Example (what `scan_inputs` may do with it):

    items = resolve(given, list_folder)
    if none_exists(items):
        raise InputError(f"no shard matches {given} ({count(given)} names, from {items[0][1]} to "
                         f"{items[0][2]}, none exists)")
    for item in items:  # ("shard", name) or ("missing", first, last, n): one failed row per run
        ...
"""

from __future__ import annotations

import re
from functools import lru_cache

from .errors import InputError

__all__ = ["MAX_FOLDERS", "count", "has_braces", "index_of", "iter_names", "name_at", "none_exists", "resolve",
           "split_name"]

#: The most combinations of the braces before the last `/` of a pattern that `resolve` lists.
MAX_FOLDERS = 100_000
#: The longest bound of a range (Python refuses to convert integers of more than 4300 digits).
_MAX_DIGITS = 1000

# The same expressions as vggfeat.shards (kept in step): what a brace is, what a range is.
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class _Range:
    __slots__ = ("lo", "hi", "width", "size", "minlen", "maxlen")

    def __init__(self, lo, hi, width):
        self.lo, self.hi, self.width = lo, hi, width
        self.size = hi - lo + 1
        near0 = 0 if lo <= 0 <= hi else (lo if lo > 0 else hi)
        self.minlen = len(self.spell(near0))
        self.maxlen = max(len(self.spell(lo)), len(self.spell(hi)))

    def spell(self, value):
        return str(value).zfill(self.width)

    def at(self, i):
        return str(self.lo + i).zfill(self.width)

    def has_slash(self):
        return False

    def exact(self, text):
        """[index] when `text` is the canonical spelling of a number of the range, else []."""
        if not self.minlen <= len(text) <= self.maxlen or not text.isascii():
            return []
        try:
            v = int(text)
        except ValueError:
            return []
        return [v - self.lo] if self.lo <= v <= self.hi and str(v).zfill(self.width) == text else []

    def matches(self, s, p):
        """(end, [index]) for each canonical spelling of a number of the range that starts at s[p]."""
        q0 = p + 1 if s.startswith("-", p) else p
        r = q0
        n = len(s)
        while r < n and "0" <= s[r] <= "9":
            r += 1
        out = []
        for q in range(max(q0 + 1, p + self.minlen), min(r, p + self.maxlen) + 1):
            text = s[p:q]
            v = int(text)
            if self.lo <= v <= self.hi and str(v).zfill(self.width) == text:
                out.append((q, (v - self.lo,)))
        return out


class _List:
    __slots__ = ("items", "size", "where", "lengths")

    def __init__(self, items):
        self.items = items
        self.size = len(items)
        self.where = {}
        for i, t in enumerate(items):
            self.where.setdefault(t, []).append(i)
        self.lengths = sorted({len(t) for t in items})

    def at(self, i):
        return self.items[i]

    def has_slash(self):
        return any("/" in t for t in self.items)

    def exact(self, text):
        return self.where.get(text, [])

    def matches(self, s, p):
        out = []
        for ln in self.lengths:
            if p + ln > len(s):
                break
            idx = self.where.get(s[p:p + ln])
            if idx is not None:
                out.append((p + ln, idx))
        return out


class _Pattern:
    """A pattern cut into literals and braces: lits[0] b[0] lits[1] ... b[m-1] lits[m]."""

    def __init__(self, pattern):
        self.pattern = pattern
        self.lits, self.braces = [], []
        pos = 0
        for mt in _BRACE.finditer(pattern):
            body = mt.group(1)
            r = _RANGE.match(body)
            if r:
                a, b = r.group(1), r.group(2)
                if max(len(a), len(b)) > _MAX_DIGITS:
                    shown = pattern if len(pattern) <= 200 else pattern[:200] + "..."
                    raise InputError(f"a brace range in {shown} has a bound of more than {_MAX_DIGITS} digits")
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise InputError(f"brace range {{{body}}} in {pattern} goes downwards; write {{{b}..{a}}}")
                width = len(a.lstrip("-")) if a.lstrip("-").startswith("0") else 0
                brace = _Range(lo, hi, width)
            elif "," in body:
                brace = _List(body.split(","))
            else:
                continue
            self.lits.append(pattern[pos:mt.start()])
            self.braces.append(brace)
            pos = mt.end()
        self.lits.append(pattern[pos:])
        # strides[j]: how many names one step of brace j skips (the product of the sizes after it)
        self.strides = [1] * len(self.braces)
        total = 1
        for j in range(len(self.braces) - 1, -1, -1):
            self.strides[j] = total
            total *= self.braces[j].size
        self.count = total

    def digits(self, i):
        out = []
        for b, stride in zip(self.braces, self.strides):
            d, i = divmod(i, stride)
            out.append(d)
        return out

    def spell(self, digits, start=0, stop=None):
        """The text of braces start..stop-1 at these digits, with the literals between (and lits[stop] when
        stop is the end)."""
        stop = len(self.braces) if stop is None else stop
        parts = []
        for j in range(start, stop):
            parts.append(self.lits[j])
            parts.append(self.braces[j].at(digits[j - start]))
        return parts


@lru_cache(maxsize=64)
def _parse(pattern) -> _Pattern:
    if not isinstance(pattern, str):
        raise TypeError(f"a brace pattern is a str, not {type(pattern).__name__}")
    return _Pattern(pattern)


def has_braces(pattern) -> bool:
    """Whether `pattern` holds a brace that expands: a range `{a..b}` or a list `{x,y}`."""
    return isinstance(pattern, str) and any(_RANGE.match(m) or "," in m for m in _BRACE.findall(pattern))


def count(pattern: str) -> int:
    """The number of names of `pattern` (1 when it has no brace), computed, not expanded.

    Raises:
        InputError: a range that goes downwards."""
    return _parse(pattern).count


def iter_names(pattern: str):
    """The names of `pattern`, in `expand_braces`'s order and spelling, one at a time.

    Raises (at the call, not at the first name):
        InputError: a range that goes downwards."""
    return _walk(_parse(pattern))


def _walk(p: _Pattern):
    braces, lits = p.braces, p.lits
    m = len(braces)
    if m == 0:
        yield lits[0]
        return
    idx = [0] * m
    pre = [lits[0]] + [""] * m  # pre[j]: the text before brace j
    for j in range(m - 1):
        pre[j + 1] = pre[j] + braces[j].at(0) + lits[j + 1]
    last, tail, lead = braces[m - 1], lits[m], m - 1
    while True:
        head = pre[lead]
        for i in range(last.size):
            yield head + last.at(i) + tail
        j = m - 2
        while j >= 0:
            idx[j] += 1
            if idx[j] < braces[j].size:
                break
            idx[j] = 0
            j -= 1
        if j < 0:
            return
        for k in range(j, m - 1):
            pre[k + 1] = pre[k] + braces[k].at(idx[k]) + lits[k + 1]


def name_at(pattern: str, i: int) -> str:
    """The name at index `i` of `pattern` (negative: from the end).

    Raises:
        IndexError: `i` outside the names. InputError: a range that goes downwards."""
    p = _parse(pattern)
    return _name_at(p, i)


def _name_at(p: _Pattern, i):
    i = int(i)
    if i < 0:
        i += p.count
    if not 0 <= i < p.count:
        raise IndexError(f"name {i} of {p.count} in {p.pattern}")
    return "".join(p.spell(p.digits(i))) + p.lits[-1]


def _parses(s, first_lit, braces, lits):
    """Every tuple of indices (one per brace) that spells `s` as first_lit b[0] lits[0] b[1] lits[1] ...

    A forward pass keeps, for each brace, the offsets reachable after it (and its following literal) with
    where each came from; the tuples are then read backwards from the end, so every path followed leads to
    a whole parse: the work is polynomial in len(s) plus the number of parses."""
    if not s.startswith(first_lit):
        return []
    if not braces:
        return [()] if len(s) == len(first_lit) else []
    if len(braces) == 1:  # the usual case, `{00000..00999}.tar`: what lies between the literals is the brace
        end = len(s) - len(lits[0])
        if end < len(first_lit) or not s.endswith(lits[0]):
            return []
        return [(i,) for i in braces[0].exact(s[len(first_lit):end])]
    levels = []
    reach = {len(first_lit): None}
    for b, lit in zip(braces, lits):
        nxt = {}
        for p in reach:
            for q, idx in b.matches(s, p):
                if s.startswith(lit, q):
                    nxt.setdefault(q + len(lit), []).append((p, idx))
        if not nxt:
            return []
        levels.append(nxt)
        reach = nxt
    if len(s) not in reach:
        return []
    out = []
    stack = [(len(levels) - 1, len(s), ())]  # (level, offset after it, the indices of the braces after it)
    while stack:
        level, q, suffix = stack.pop()
        for p, idx in levels[level][q]:
            for i in idx:
                if level == 0:
                    out.append((i,) + suffix)
                else:
                    stack.append((level - 1, p, (i,) + suffix))
    return out


def index_of(pattern: str, name: str) -> list:
    """Every index of `pattern` whose name is exactly `name`, ascending (usually none or one)."""
    p = _parse(pattern)
    found = _parses(name, p.lits[0], p.braces, p.lits[1:])
    return sorted(sum(d * s for d, s in zip(digits, p.strides)) for digits in found)


def split_name(name: str):
    """(folder, file): the folder up to and including the last `/` (`""` when there is none)."""
    k = name.rfind("/")
    return name[:k + 1], name[k + 1:]


def none_exists(items) -> bool:
    """True when `resolve` found no existing name (its one item is a missing run)."""
    return all(item[0] == "missing" for item in items)


def _folder_split(p: _Pattern):
    """(number of folder braces F, the literal that ends the head, the first literal of the file part):
    the braces 0..F-1 are expanded; the rest of the pattern (the file part) holds no '/'."""
    last = None  # ("lit", i) or ("brace", j): the last segment that may hold a '/'
    for i, lit in enumerate(p.lits):
        if "/" in lit:
            last = ("lit", i)
        if i < len(p.braces) and p.braces[i].has_slash():
            last = ("brace", i)
    if last is None:
        return 0, "", p.lits[0]
    kind, i = last
    if kind == "lit":
        k = p.lits[i].rfind("/")
        return i, p.lits[i][:k + 1], p.lits[i][k + 1:]
    return i + 1, "", p.lits[i + 1]


def resolve(pattern: str, list_folder) -> list:
    """Which names of `pattern` exist, as listed by `list_folder`: a list, in index order, of
    `("shard", name)` and `("missing", first_name, last_name, n)` (a maximal run of n absent names).

    Raises:
        InputError: a range that goes downwards; more than `MAX_FOLDERS` folder combinations."""
    p = _parse(pattern)
    n_folder, head_end, file_lit = _folder_split(p)
    fbraces = p.braces[:n_folder]
    rbraces, rlits = p.braces[n_folder:], p.lits[n_folder + 1:]
    combos = 1
    for b in fbraces:
        combos *= b.size
    if combos > MAX_FOLDERS:
        raise InputError(f"the braces before the last '/' of {pattern} name {combos} folders "
                         f"(at most {MAX_FOLDERS}); put the range in the file name")
    per_folder = p.count // combos  # names of one folder combination
    # folder -> {file prefix: [index of the combination]}, folders in order of first appearance
    groups = {}
    sizes = [b.size for b in fbraces]
    digits = [0] * n_folder
    for c in range(combos):
        head = "".join(p.spell(digits, 0, n_folder)) + head_end
        folder, prefix = split_name(head)
        groups.setdefault(folder, {}).setdefault(prefix, []).append(c)
        j = n_folder - 1
        while j >= 0:
            digits[j] += 1
            if digits[j] < sizes[j]:
                break
            digits[j] = 0
            j -= 1
    strides = p.strides[n_folder:]
    found = []
    for folder, prefixes in groups.items():
        listed = list_folder(folder)
        if not listed:
            continue
        longest = max(len(x) for x in prefixes)
        for entry in set(listed):
            if not isinstance(entry, str) or "/" in entry:
                continue
            for q in range(min(longest, len(entry)) + 1):
                cs = prefixes.get(entry[:q])
                if cs is None:
                    continue
                for digits in _parses(entry[q:], file_lit, rbraces, rlits):
                    offset = sum(d * s for d, s in zip(digits, strides))
                    name = folder + entry  # == _name_at(p, index): entry parsed as exactly these digits
                    found.extend((c * per_folder + offset, name) for c in cs)
    found.sort()
    items, nxt = [], 0
    for i, name in found:
        if i > nxt:
            items.append(("missing", _name_at(p, nxt), _name_at(p, i - 1), i - nxt))
        items.append(("shard", name))
        nxt = i + 1
    if nxt < p.count:
        items.append(("missing", _name_at(p, nxt), _name_at(p, p.count - 1), p.count - nxt))
    return items
