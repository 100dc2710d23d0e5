"""vggfeat.braces: brace patterns counted, walked and resolved against folder listings without expanding
them; the same names, order and spelling as `vggfeat.shards.expand_braces` (the reference)."""

import itertools
import os
import subprocess
import sys
import time
import tracemalloc

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vggfeat import braces
from vggfeat.braces import (MAX_FOLDERS, count, has_braces, index_of, iter_names, name_at, none_exists, resolve,
                            split_name)
from vggfeat.errors import InputError
from vggfeat.shards import expand_braces
from vggfeat.shards import has_braces as shards_has_braces

PATTERNS = [
    "plain.tar", "", "{}", "{x}", "{", "}", "}{", "{a,b", "a,b}", "{1..a}", "{..}", "{1...3}",
    "{a,b}.tar", "{a,}.tar", "{,}", "{,,}x", "{a,a,b}", "{a,ab}{b,}.tar",
    "{0..3}.tar", "{00..03}.tar", "{00008..00011}.tar", "{8..11}.tar", "{08..100}", "{0..0}", "{007..7}",
    "{-3..3}", "{-03..3}", "{-003..03}", "{-0..2}", "{-05..-01}", "{-10..-8}x",
    "{1..2}{a,b}{00..01}.tar", "a{0..1}b{0..1}c{0..1}d",
    "{a,b}/{0..1}.tar", "s/{x,y}/{0..2}/{a,b}.tar", "{a/x,b}{0..2}.tar", "d/{a,b/c}/e{0..1}.tar",
    "s3://bucket/{a,b}/{000..003}.tar", "http://host/d/{a,b}.tar", "/abs/{0..2}.tar", "/{0..2}.tar",
    "{{a,b}}", "{x{0..2}}", "{a,{b,c}}", "{1..2}{}{x}{3..4}", "a{b}c{1..2}", "{1..2\n}", "{١..٣}.tar",
    "{x,y}{}{1..2}/{,z}", "{0..2}/", "{a,b}/",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_same_names_as_expand_braces(pattern):
    names = expand_braces(pattern)
    assert list(iter_names(pattern)) == names
    assert count(pattern) == len(names)
    assert [name_at(pattern, i) for i in range(len(names))] == names
    assert [name_at(pattern, i - len(names)) for i in range(len(names))] == names
    for i, n in enumerate(names):  # round trip: every index of a name is found, and spells it
        found = index_of(pattern, n)
        assert i in found and all(names[j] == n for j in found)
        assert found == [j for j, m in enumerate(names) if m == n]
    assert has_braces(pattern) == shards_has_braces(pattern)


def test_has_braces():
    assert has_braces("a/{0..2}.tar") and has_braces("{a,b}") and has_braces("{,}")
    assert not has_braces("a/{x}.tar") and not has_braces("plain") and not has_braces(None)
    assert not has_braces(["{0..1}"])


def test_name_at_outside_is_index_error():
    with pytest.raises(IndexError):
        name_at("{0..2}", 3)
    with pytest.raises(IndexError):
        name_at("{0..2}", -4)
    with pytest.raises(IndexError):
        name_at("plain", 1)
    assert name_at("plain", 0) == name_at("plain", -1) == "plain"


def test_downward_range_is_the_same_input_error():
    with pytest.raises(InputError) as ref:
        expand_braces("s/{5..1}.tar")
    with pytest.raises(InputError) as ours:
        count("s/{5..1}.tar")
    assert str(ours.value) == str(ref.value) == "brace range {5..1} in s/{5..1}.tar goes downwards; write {1..5}"
    # a later brace: the whole pattern is named (expand_braces names the text after the previous brace)
    p = "s/{0..2}/{09..03}.tar"
    for call in (count, iter_names, lambda q: name_at(q, 0), lambda q: index_of(q, "x"),
                 lambda q: resolve(q, lambda f: set())):
        with pytest.raises(InputError, match=r"^brace range \{09\.\.03\} in s/\{0\.\.2\}/\{09\.\.03\}\.tar goes "
                                             r"downwards; write \{03\.\.09\}$"):
            call(p)
    with pytest.raises(InputError, match="goes downwards"):
        count("{-1..-2}")


def test_absurd_bound_is_input_error():
    with pytest.raises(InputError, match="more than 1000 digits"):
        count("{0.." + "9" * 5000 + "}")
    assert count("{0.." + "9" * 900 + "}") == 10 ** 900
    assert name_at("{0.." + "9" * 900 + "}", -1) == "9" * 900


def test_huge_ranges_are_counted_and_walked_lazily():
    p = "s3://b/{a,b}/{000000000..999999999}.tar"
    assert count(p) == 2 * 10 ** 9
    assert list(itertools.islice(iter_names(p), 3)) == [f"s3://b/a/00000000{i}.tar" for i in range(3)]
    assert name_at(p, 10 ** 9) == "s3://b/b/000000000.tar" and name_at(p, -1) == "s3://b/b/999999999.tar"
    assert index_of(p, "s3://b/b/000000005.tar") == [10 ** 9 + 5]
    assert index_of(p, "s3://b/b/5.tar") == [] and index_of(p, "s3://b/c/000000005.tar") == []
    assert count("{0..9}" * 30) == 10 ** 30 and name_at("{0..9}" * 30, 12345) == "0" * 25 + "12345"


def test_split_name():
    assert split_name("s3://b/x/1.tar") == ("s3://b/x/", "1.tar")
    assert split_name("http://host/d/a.tar") == ("http://host/d/", "a.tar")
    assert split_name("/d/1.tar") == ("/d/", "1.tar") and split_name("/1.tar") == ("/", "1.tar")
    assert split_name("1.tar") == ("", "1.tar") and split_name("d/") == ("d/", "")


# ---- resolve -----------------------------------------------------------------------------------------


class Listing:
    """A fake `list_folder` over {folder: names}, counting its calls."""

    def __init__(self, folders):
        self.folders = folders
        self.calls = []

    def __call__(self, folder):
        self.calls.append(folder)
        return self.folders.get(folder)


def reference(pattern, folders):
    """resolve's answer the slow way: every name expanded and looked up in its folder's listing."""
    items, run = [], None
    for n in expand_braces(pattern):
        folder, file = split_name(n)
        if file in set(folders.get(folder) or ()):
            if run:
                items.append(("missing", run[0], run[1], run[2]))
                run = None
            items.append(("shard", n))
        else:
            run = (run[0], n, run[2] + 1) if run else (n, n, 1)
    if run:
        items.append(("missing", run[0], run[1], run[2]))
    return items


def check(pattern, folders):
    lf = Listing(folders)
    got = resolve(pattern, lf)
    assert got == reference(pattern, folders)
    assert len(lf.calls) == len(set(lf.calls))  # each folder listed once at most
    assert sum(it[3] if it[0] == "missing" else 1 for it in got) == count(pattern)
    for it in got:  # round trip with name_at / index_of
        if it[0] == "shard":
            assert all(name_at(pattern, i) == it[1] for i in index_of(pattern, it[1]))
    return got, lf


def test_resolve_gaps_at_the_start_middle_and_end():
    p = "shards/{00000..00009}.tar"
    got, lf = check(p, {"shards/": {"00002.tar", "00003.tar", "00006.tar", "other.txt"}})
    assert got == [("missing", "shards/00000.tar", "shards/00001.tar", 2), ("shard", "shards/00002.tar"),
                   ("shard", "shards/00003.tar"), ("missing", "shards/00004.tar", "shards/00005.tar", 2),
                   ("shard", "shards/00006.tar"), ("missing", "shards/00007.tar", "shards/00009.tar", 3)]
    assert lf.calls == ["shards/"]
    got, _ = check(p, {"shards/": {f"0000{i}.tar" for i in range(10)}})
    assert got == [("shard", f"shards/0000{i}.tar") for i in range(10)] and not none_exists(got)
    got, _ = check(p, {"shards/": {"00000.tar", "00009.tar"}})
    assert got == [("shard", "shards/00000.tar"), ("missing", "shards/00001.tar", "shards/00008.tar", 8),
                   ("shard", "shards/00009.tar")]


def test_resolve_none_exists_is_one_missing_run():
    for folders in ({}, {"shards/": set()}, {"shards/": None}, {"shards/": {"x.tar", "10.tar", "5.tar"}}):
        got, _ = check("shards/{00..09}.tar", folders)
        assert got == [("missing", "shards/00.tar", "shards/09.tar", 10)] and none_exists(got)
    got, _ = check("s3://b/{a,b}/{0..4}.tar", {"s3://b/c/": {"0.tar"}})
    assert got == [("missing", "s3://b/a/0.tar", "s3://b/b/4.tar", 10)] and none_exists(got)


def test_resolve_counts_only_canonical_spellings():
    listed = {"7.tar", "007.tar", "0007.tar", "010.tar", "-01.tar", "-0.tar", "+1.tar", " 2.tar", "2 .tar",
              "١.tar", "03.tar ", "03.TAR", "03.tar", "100.tar", "05.tar.tar", "06.tar/", "04"}
    got, _ = check("d/{00..09}.tar", {"d/": listed})
    assert [it[1] for it in got if it[0] == "shard"] == ["d/03.tar"]
    got, _ = check("d/{0..12}.tar", {"d/": listed})
    assert [it[1] for it in got if it[0] == "shard"] == ["d/7.tar"]
    got, _ = check("d/{-2..2}.tar", {"d/": {"-2.tar", "-02.tar", "-0.tar", "0.tar", "3.tar", "-3.tar"}})
    assert [it[1] for it in got if it[0] == "shard"] == ["d/-2.tar", "d/0.tar"]
    got, _ = check("d/{-05..05}.tar", {"d/": {"-5.tar", "-05.tar", "00.tar", "0.tar", "05.tar", "5.tar"}})
    assert [it[1] for it in got if it[0] == "shard"] == ["d/-5.tar", "d/00.tar", "d/05.tar"]
    got, _ = check("d/{8..100}{0..9}.tar", {"d/": {"80.tar", "1000.tar", "089.tar", "1001.tar", "9.tar"}})
    assert [it[1] for it in got if it[0] == "shard"] == ["d/80.tar", "d/1000.tar", "d/1001.tar"]  # 100 then 1


def test_resolve_ambiguous_and_repeated_names():
    # "ab.tar" is both (a, b) and (ab, ""): names 0 and 3 of ab, a, abb, ab; both exist
    got, _ = check("d/{a,ab}{b,}.tar", {"d/": {"ab.tar"}})
    assert got == [("shard", "d/ab.tar"), ("missing", "d/a.tar", "d/abb.tar", 2), ("shard", "d/ab.tar")]
    assert index_of("d/{a,ab}{b,}.tar", "d/ab.tar") == [0, 3]
    got, _ = check("d/{a,a,b}{1..2}.tar", {"d/": ["a2.tar", "a2.tar", "b1.tar"]})  # a repeated listing entry
    assert [it[1] for it in got if it[0] == "shard"] == ["d/a2.tar", "d/a2.tar", "d/b1.tar"]
    check("{,a}{,a}{,a}{,a}.tar", {"": {"aa.tar", ".tar", "aaaa.tar", "aaaaa.tar"}})
    check("{1..12}{1..12}.tar", {"": {"111.tar", "1212.tar", "112.tar", "121.tar", "11.tar"}})
    check("x{0..1}{00..11}{-1..1}", {"": {"x011-1", "x0110", "x1-1", "x1111", "x0000", "x100-1"}})


def test_resolve_folders():
    folders = {"s/x/0/": {"a.tar"}, "s/x/2/": {"b.tar", "a.tar"}, "s/y/1/": {"b.tar"}}
    got, lf = check("s/{x,y}/{0..2}/{a,b}.tar", folders)
    assert lf.calls == ["s/x/0/", "s/x/1/", "s/x/2/", "s/y/0/", "s/y/1/", "s/y/2/"]
    # a list item holding a '/': two spellings share one folder, each listed once
    got, lf = check("{d/a,d/b,e}{0..2}.tar", {"d/": {"a1.tar", "b0.tar", "b2.tar", "e1.tar"}, "": {"e1.tar"}})
    assert lf.calls == ["d/", ""]
    assert [it[1] for it in got if it[0] == "shard"] == ["d/a1.tar", "d/b0.tar", "d/b2.tar", "e1.tar"]
    check("d/{a,b/c}/e{0..1}.tar", {"d/a/": {"e1.tar"}, "d/b/c/": {"e0.tar", "e1.tar"}})
    check("{0..2}/", {"0/": {""}, "1/": {"x"}})
    # URLs and absolute paths: the folder is passed as spelt, scheme and host untouched
    got, lf = check("s3://bucket/{a,b}/{000..003}.tar", {"s3://bucket/b/": {"002.tar"}})
    assert lf.calls == ["s3://bucket/a/", "s3://bucket/b/"]
    got, lf = check("http://host/d/{a,b}.tar", {"http://host/d/": {"b.tar"}})
    assert lf.calls == ["http://host/d/"] and got[-1] == ("shard", "http://host/d/b.tar")
    got, lf = check("/{0..2}.tar", {"/": {"1.tar"}})
    assert lf.calls == ["/"]
    got, lf = check("{0..2}.tar", {"": {"2.tar"}})
    assert lf.calls == [""]
    got, lf = check("plain.tar", {"": {"plain.tar"}})
    assert got == [("shard", "plain.tar")]
    assert resolve("d/plain.tar", Listing({})) == [("missing", "d/plain.tar", "d/plain.tar", 1)]


def test_resolve_refuses_too_many_folders():
    lf = Listing({})
    with pytest.raises(InputError, match=r"^the braces before the last '/' of s/\{0\.\.100000\}/\{0\.\.9\}\.tar "
                                         r"name 100001 folders \(at most 100000\)"):
        resolve("s/{0..100000}/{0..9}.tar", lf)
    assert lf.calls == []
    with pytest.raises(InputError, match="folders"):
        resolve("{0..999}/{0..999}/x.tar", lf)
    assert MAX_FOLDERS == 100_000


def _measure(pattern, files):
    lf = Listing({"d/": files})
    built = []
    real = braces._name_at
    tracemalloc.start()
    try:
        braces._name_at = lambda p, i: built.append(i) or real(p, i)
        t = time.perf_counter()
        got = resolve(pattern, lf)
        elapsed = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        braces._name_at = real
        tracemalloc.stop()
    return got, peak, len(built), elapsed, lf.calls


def test_resolve_ten_million_and_a_billion_names_with_three_existing(capsys):
    files = {"0000003.tar", "5000000.tar", "9999998.tar", "3.tar", "readme.txt"}
    got7, peak7, built7, t7, calls7 = _measure("d/{0000000..9999998}.tar", files)
    assert got7 == [("missing", "d/0000000.tar", "d/0000002.tar", 3), ("shard", "d/0000003.tar"),
                    ("missing", "d/0000004.tar", "d/4999999.tar", 4999996), ("shard", "d/5000000.tar"),
                    ("missing", "d/5000001.tar", "d/9999997.tar", 4999997), ("shard", "d/9999998.tar")]
    files9 = {"000000003.tar", "500000000.tar", "999999999.tar", "3.tar", "readme.txt"}
    got9, peak9, built9, t9, calls9 = _measure("d/{000000000..999999999}.tar", files9)
    assert [it[0] for it in got9] == ["missing", "shard", "missing", "shard", "missing", "shard"]
    assert got9[4] == ("missing", "d/500000001.tar", "d/999999998.tar", 499999998)
    assert calls7 == calls9 == ["d/"]
    # the work follows the existing names, not the range: as many names spelt (and the same peak memory)
    # for a billion names as for ten million, and nothing near the size of the range
    assert built7 == built9 == 2 * 3  # the first and last names of the three missing runs
    assert peak7 < 1_000_000 and peak9 < 1_000_000
    assert peak9 < peak7 + 10_000
    nothing = resolve("d/{000000000..999999999}.tar", Listing({"d/": set()}))
    assert nothing == [("missing", "d/000000000.tar", "d/999999999.tar", 10 ** 9)] and none_exists(nothing)
    with capsys.disabled():
        print(f"\n[braces] resolve 10^7 names: {t7 * 1000:.2f} ms, tracemalloc peak {peak7} B; "
              f"10^9 names: {t9 * 1000:.2f} ms, peak {peak9} B")


def test_resolve_a_folder_of_100000_shards():
    files = {f"{i:06d}.tar" for i in range(0, 200_000, 2)} | {f"{i}.tar" for i in range(1000)}
    lf = Listing({"d/": files})
    got = resolve("d/{000000..199999}.tar", lf)
    assert sum(1 for it in got if it[0] == "shard") == 100_000
    assert got[:3] == [("shard", "d/000000.tar"), ("missing", "d/000001.tar", "d/000001.tar", 1),
                       ("shard", "d/000002.tar")]


def test_module_imports_nothing_heavy():
    code = ("import sys, vggfeat.braces; bad = [m for m in ('fsspec', 'numpy', 'PIL', 'tensorflow', "
            "'vggfeat.shards') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


# ---- property-based fuzzing -----------------------------------------------------------------------------

def fuzz(n):
    return settings(derandomize=True, database=None, deadline=None, max_examples=n)

text_patterns = st.text(alphabet="{}{}{},,..-0123456789ab/x\n١", max_size=24)


@st.composite
def structured(draw, max_count=400):
    """A pattern made of literals, ranges (padded or not, negative or not) and lists, kept small."""
    parts, total = [draw(st.text(alphabet="ab/.x-0", max_size=3))], 1
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            lo = draw(st.integers(-12, 110))
            hi = lo + draw(st.integers(0, 12))
            width = draw(st.sampled_from([0, 0, 2, 3]))
            a = ("-" if lo < 0 else "") + str(abs(lo)).zfill(width)
            if draw(st.integers(0, 9)) == 0:
                a, hi = str(hi + 1), hi  # now and then a downward range
            body, size = f"{a}..{hi}", max(hi - lo + 1, 1)
        else:
            items = draw(st.lists(st.text(alphabet="ab/0-1", max_size=3), min_size=2, max_size=4))
            body, size = ",".join(items), len(items)
        total *= size
        if total > max_count:
            break
        parts.append("{" + body + "}")
        parts.append(draw(st.text(alphabet="ab/.x-0{}", max_size=3)))
    return "".join(parts)


def _agree(pattern):
    try:
        n = count(pattern)
    except InputError:
        with pytest.raises(InputError):
            expand_braces(pattern)
        return
    names = list(iter_names(pattern))
    assert names == expand_braces(pattern)
    assert n == len(names)
    assert [name_at(pattern, i) for i in range(n)] == names
    for i, name in enumerate(names):
        assert i in index_of(pattern, name)


@fuzz(400)
@given(text_patterns)
def test_fuzz_text_patterns_give_names_or_input_error(pattern):
    assume(count_small(pattern))
    _agree(pattern)


def count_small(pattern):
    try:
        return count(pattern) <= 2000
    except InputError:
        return True


@fuzz(300)
@given(structured())
def test_fuzz_structured_patterns_same_as_expand_braces(pattern):
    _agree(pattern)


@fuzz(200)
@given(structured(max_count=200), st.data())
def test_fuzz_resolve_matches_brute_force(pattern, data):
    try:
        names = expand_braces(pattern)
    except InputError:
        with pytest.raises(InputError):
            resolve(pattern, Listing({}))
        return
    folders = {}
    for n in names:
        folder, file = split_name(n)
        if data.draw(st.integers(0, 3)) == 0:
            folders.setdefault(folder, set()).add(file)
        # near misses: unpadded, padded, signed, doubled or cut spellings of a name
        noise = data.draw(st.sampled_from(["", "0", "-", "00", "a", "1"]))
        cut = data.draw(st.integers(0, len(file)))
        if data.draw(st.integers(0, 4)) == 0:
            folders.setdefault(folder, set()).add(file[:cut] + noise + file[cut:])
        if data.draw(st.integers(0, 9)) == 0 and file:
            folders.setdefault(folder, set()).add(file[:cut] + file[cut + 1:])
    if data.draw(st.booleans()):
        folders.setdefault("nowhere/", set()).add("x")
    check(pattern, folders)
