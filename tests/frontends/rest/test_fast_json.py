"""fast_json.loads must equal the plain path (orjson, or json.loads for NaN/Infinity), arrays aside."""

from __future__ import annotations

import json
import math
import random
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pytest

from pyserving.frontends.rest import fast_json
from pyserving.frontends.rest.fast_json import JsonParseError, loads

SMALL = 256  # most tests lower MIN_FAST_BYTES to this, so that small documents take the fast path


@pytest.fixture(autouse=True, params=["simdjson", "numpy"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: numbers read by simdjson, and by the numpy path (as where pysimdjson is missing)."""
    monkeypatch.setattr(fast_json, "MIN_FAST_BYTES", SMALL)
    if request.param == "numpy":
        monkeypatch.setattr(fast_json, "_simdjson", None)
    elif fast_json._simdjson is None:
        pytest.skip("pysimdjson is not installed")
    return request.param


def plain(body: bytes) -> Any:
    """The reference: orjson, or json.loads when bare NaN/Infinity tokens made orjson fail."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        if b"NaN" not in body and b"Infinity" not in body:
            raise
        return json.loads(body.decode())


def same_number(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b


def assert_same(ours: Any, ref: Any, path: str = "$") -> None:
    """Equal, except that an ndarray stands for a rectangular list of numbers with the same values."""
    if isinstance(ours, np.ndarray):
        assert isinstance(ref, list), path
        assert ours.flags.c_contiguous and ours.flags.writeable, path
        flat = np.asarray(ref, dtype=object).ravel().tolist()
        assert np.asarray(ref, dtype=object).shape == ours.shape, path
        ints = all(type(v) is int and -(2**63) <= v < 2**63 for v in flat)
        assert ours.dtype == (np.int64 if ints else np.float64), path
        for i, (a, b) in enumerate(zip(ours.ravel().tolist(), flat)):
            assert same_number(a, b if ints else float(b)), f"{path}[{i}]: {a!r} != {b!r}"
    elif isinstance(ours, dict):
        assert isinstance(ref, dict) and list(ours) == list(ref), path
        for k in ours:
            assert_same(ours[k], ref[k], f"{path}.{k}")
    elif isinstance(ours, list):
        assert isinstance(ref, list) and len(ours) == len(ref), path
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert same_number(ours, ref), f"{path}: {ours!r} != {ref!r}"


def check(body: bytes) -> Any:
    """loads(body) agrees with the plain path: same value, or a JsonParseError where it raises."""
    try:
        ref = plain(body)
    except (ValueError, RecursionError):
        with pytest.raises(JsonParseError) as info:
            loads(body)
        assert 0 <= info.value.offset <= len(body)
        return None
    ours = loads(body)
    assert_same(ours, ref)
    return ours


# --- random documents ----------------------------------------------------------------------------------------


def random_number(rng: random.Random, hard: float = 0.5) -> str:
    """A JSON number; with probability `hard` one of the kinds the vectorised path hands to float()."""
    kind = rng.randrange(5) if rng.random() < hard else rng.randrange(5, 12)
    if kind == 0:
        return str(rng.randint(-(2**70), 2**70))  # beyond int64 (and uint64)
    if kind == 1:
        return rng.choice(["0", "-0", "-0.0", "0.0", "1E5", "1e+05", "2.5E-3", "1e-400", "4.9e-324", "1e308"])
    if kind == 2:  # bit patterns of any double, in repr form
        x = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        return repr(x) if math.isfinite(x) else "1.5"
    if kind == 3:  # many digits: past the 19 the vectorised path decodes
        return f"{rng.choice(['', '-'])}{rng.randint(0, 9)}.{rng.getrandbits(90)}"
    if kind == 4:  # exact midpoints between two doubles: rounding ties
        m, j = rng.getrandbits(52) | 1 << 52, rng.randrange(5)
        return str(Decimal(2 * m + 1) / Decimal(2 ** (j + 1)))
    if kind == 5:
        return f"{rng.randint(-9, 9)}.{rng.randint(0, 10**rng.randint(1, 17))}e{rng.randint(-30, 30)}"
    if kind == 6:
        return str(rng.randint(-(2**63), 2**63 - 1))
    if kind == 7:
        return repr(float(np.float32(rng.random())))
    return repr(rng.uniform(-1, 1)) if kind < 10 else str(rng.randint(-1000, 1000))


def random_string(rng: random.Random) -> str:
    pieces = ["[", "]", "1,2", '\\"', "\\\\", "\\n", "\\u00e9", "é", " ", "abc", "0.5", ",", "{", "}", "\\u005b"]
    return '"' + "".join(rng.choice(pieces) for _ in range(rng.randrange(6))) + '"'


def sep(rng: random.Random) -> str:
    return rng.choice([",", ",", ", ", ",\n  ", " , ", ",\t"])


def random_array(rng: random.Random) -> str:
    """Rectangular (sometimes ragged, mixed or broken up by whitespace) nested numeric array text."""
    shape = [rng.randint(1, 4) for _ in range(rng.randint(0, 3))] + [rng.choice([1, 3, 20, 50, 100])]
    ints = rng.random() < 0.3
    token = (lambda: str(rng.randint(-(2**40), 2**40))) if ints else (lambda: random_number(rng, 0.02))
    s = sep(rng) if rng.random() < 0.3 else ","

    def build(level: int) -> str:
        n = shape[level]
        if level == len(shape) - 1:
            items = [token() for _ in range(n)]
        else:
            items = [build(level + 1) for _ in range(n)]
        if rng.random() < 0.05:  # ragged or mixed
            items.append(rng.choice(["1", "[1]", "null", '"x"', "[]", "NaN", "true"]))
        return "[" + s.join(items) + "]"

    return build(0)


def random_value(rng: random.Random, depth: int = 0) -> str:
    kind = rng.randrange(8 if depth < 4 else 3)
    if kind == 0:
        return random_number(rng)
    if kind == 1:
        return random_string(rng)
    if kind == 2:
        return rng.choice(["true", "false", "null", "NaN", "-Infinity", "Infinity"] if rng.random() < 0.2 else ["1"])
    if kind in (3, 4, 5):
        return random_array(rng)
    if kind == 6:
        return "[" + sep(rng).join(random_value(rng, depth + 1) for _ in range(rng.randrange(4))) + "]"
    items = (f"{random_string(rng)}:{random_value(rng, depth + 1)}" for _ in range(rng.randrange(4)))
    return "{" + sep(rng).join(items) + "}"


@pytest.mark.parametrize("seed", range(8))
def test_random_documents_match_plain_path(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(25):
        body = random_value(rng).encode()
        check(body)
        if rng.random() < 0.3:  # and broken copies of it
            cut = rng.randrange(len(body) + 1)
            check(body[:cut])
            check(body[:cut] + b"," + body[cut:])


def test_random_documents_hit_the_fast_path() -> None:
    rng = random.Random(1234)
    arrays = 0
    for _ in range(60):
        ours = check(b'{"x": ' + random_array(rng).encode() + b"}")
        arrays += isinstance(ours, dict) and isinstance(ours["x"], np.ndarray)
    assert arrays > 20


# --- numbers -------------------------------------------------------------------------------------------------


def big(tokens: list[str], sep: str = ",") -> bytes:
    """A numeric array long enough for the fast path, containing `tokens` among filler."""
    filler = ["0.5"] * max(0, SMALL // 4 - len(tokens))
    return ("[" + sep.join(filler + tokens) + "]").encode()


def test_float_exactness_against_float() -> None:
    rng = random.Random(7)
    tokens = [random_number(rng, 0.04) for _ in range(20000)]
    tokens = [t for t in tokens if "." in t or "e" in t.lower()]
    ours = check(big(tokens))
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64
    expect = [float(t) for t in tokens]
    got = ours[len(ours) - len(tokens) :].tolist()
    assert all(same_number(a, b) for a, b in zip(got, expect))


def test_rounding_ties_and_hard_cases() -> None:
    tokens = ["9007199254740993", "9007199254740993.0", "18014398509481986.0", "0.1", "0.3", "1.7976931348623157e308",
              "2.2250738585072014e-308", "2.2250738585072011e-308", "5e-324", "123456789012345678.5",
              "0.00000000000000000000000000123", "8.98846567431158e307", "1e23", "9.999999999999999e22"]
    ours = check(big(tokens))
    assert [same_number(a, float(t)) for a, t in zip(ours[-len(tokens) :].tolist(), tokens)] == [True] * len(tokens)


@pytest.mark.parametrize(
    ("tokens", "dtype"),
    [(["1", "-2", "0", "-0"], np.int64), (["1", "2.0"], np.float64), (["1", "1e2"], np.float64),
     (["9223372036854775807", "-9223372036854775808"], np.int64), (["1", "1E0"], np.float64)],
)
def test_dtype_rules(tokens: list[str], dtype: type) -> None:
    body = ("[" + ",".join(tokens * SMALL) + "]").encode()
    ours = check(body)
    assert isinstance(ours, np.ndarray) and ours.dtype == dtype


@pytest.mark.parametrize("token", ["9223372036854775808", "-9223372036854775809", "18446744073709551616", "1" * 30])
def test_integers_beyond_int64_stay_lists(token: str) -> None:
    ours = check(("[" + ",".join(["1"] * SMALL + [token]) + "]").encode())
    assert isinstance(ours, list)


def test_overflow_follows_the_plain_path() -> None:
    with pytest.raises(JsonParseError) as info:
        loads(big(["1e400"]))
    assert info.value.reason == "Number too big to be stored in double."
    ours = loads(big(["1e400"])[:-1] + b',"x", NaN]')  # json.loads path: inf
    assert ours[-3] == math.inf and math.isnan(ours[-1])


# --- what simdjson reads (and the numpy path too: both readers run every test) --------------------------------


def floats_of(ours: Any, tokens: list[str]) -> None:
    """The last len(tokens) values of `ours` are exactly float(token) (sign of zero included)."""
    got = ours[len(ours) - len(tokens) :].tolist()
    expect = [float(int(t)) if t.lstrip("-").isdigit() else float(t) for t in tokens]
    assert [same_number(a, b) for a, b in zip(got, expect)] == [True] * len(tokens), list(zip(tokens, got))


def test_17_digit_floats() -> None:
    """float32 pixels written by json.dumps (as the article's client does), and doubles at full precision."""
    rng = np.random.default_rng(3)
    pixels = rng.random(300, dtype=np.float32).astype(np.float64)
    doubles = rng.standard_normal(300) * 10.0 ** rng.integers(-300, 300, 300)
    tokens = [json.dumps(v) for v in pixels.tolist()] + ["%.17g" % v for v in doubles] + ["%.16e" % v for v in doubles]
    assert max(len(t.lstrip("-").split("e")[0]) for t in tokens) >= 18  # 17 digits and a dot
    ours = check(big(tokens))
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64
    floats_of(ours, tokens)


def test_integers_near_int64_limits() -> None:
    limits = ["9223372036854775807", "-9223372036854775808", "-9223372036854775807", "9223372036854775806", "-0", "0"]
    ours = check(("[" + ",".join(limits * SMALL) + "]").encode())
    assert isinstance(ours, np.ndarray) and ours.dtype == np.int64
    assert ours[: len(limits)].tolist() == [int(t) for t in limits]
    # In a float array, as np.asarray converts orjson's ints: float(int), rounded to nearest even.
    beyond = ["9223372036854775808", "-9223372036854775809", "18446744073709551615", "18446744073709551616",
              "9007199254740993", "9007199254740995", "-9007199254740993", "1" + "0" * 30, "-0"]
    for tokens in (limits + beyond, limits + beyond[:3] + beyond[4:7]):  # (with and without one beyond uint64)
        ours = check(big(tokens))
        assert isinstance(ours, np.ndarray) and ours.dtype == np.float64
        floats_of(ours, tokens)


def test_mixed_int_and_float_arrays() -> None:
    ours = check(orjson.dumps([[1, 2.5, -3], [0, 100.0, 7], [-1, 0.7, 2**40 + 1]] * 40))
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64 and ours.shape == (120, 3)
    tokens = ["1", "2.5", "-3", "-0", "-0.0", "0", "0.0", "1e2", "7E-1", "123456789012345678", "-1", "4503599627370497"]
    ours = check(big(tokens))
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64
    floats_of(ours, tokens)  # with "-0" the integer 0 (+0.0), "-0.0" -0.0


def test_exponents() -> None:
    tokens = ["1E5", "1e+05", "1e-05", "2.5E-3", "-3e-0007", "0e0", "-0e0", "0E-0", "5E00", "1e308", "-1e-400",
              "1.7976931348623157e308", "1.7976931348623158e308", "1e-400", "4.9e-324", "2.4703282292062328e-324",
              "2.4703282292062327e-324", "2.2250738585072011e-308", "1e-320", "123456789e-9", "1" + "0" * 25 + "e-25",
              "0.000001e6", "-9.999999999999999e22", "1e23", "8.98846567431158e307", "1E-0000000000000000000001"]
    ours = check(big(tokens))
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64
    floats_of(ours, tokens)


def test_long_mantissas(reader: str) -> None:
    """Past 19 significant digits the numpy path reads each number with float(), so arrays made mostly of such
    numbers stay lists there (orjson is faster); simdjson reads them exactly and as fast: arrays."""
    tokens = ["%d.%025d" % (i, i * 7919) for i in range(200)]
    tokens += ["0." + "3" * 400, "1" * 300 + ".5", "-" + "9" * 30 + "e-10"]
    ours = check(big(tokens))
    assert isinstance(ours, np.ndarray) == (reader == "simdjson")
    if reader == "simdjson":
        floats_of(ours, tokens)


@pytest.mark.parametrize(
    "ragged",
    ["[[1,2],[3],[4,5,6]]", "[[1,2,3],[4],[5,6]]", "[[1],[2,3]]", "[[1,2,3],[],[4,5,6]]", "[[1,2,3],[4,[5],6]]",
     "[[1,2,3],[[4,5,6]]]", "[[[1,2],[3,4]],[[5,6,7,8]]]", "[[[1,2],[3,4]],[[5],[6,7,8]]]", "[[1,2],[3,4],5,6]"],
)
def test_ragged_arrays_with_a_rectangle_s_count_stay_lists(ragged: str) -> None:
    """simdjson flattens any nesting: the count alone cannot tell these from rectangles, the layout does."""
    inner = ragged[1:-1]
    body = ("[" + ",".join([inner] * (SMALL // len(inner) + 1)) + "]").encode()
    assert isinstance(check(body), list)
    rows = np.arange(300).reshape(100, 3).tolist()
    rows[10].append(rows[11].pop())  # 300 numbers in 100 rows, one of 4 and one of 2
    assert isinstance(check(orjson.dumps({"x": rows}))["x"], list)
    cube = (np.arange(300) * 0.5).reshape(10, 10, 3).tolist()
    cube[4].append(cube[5].pop())
    assert isinstance(check(orjson.dumps(cube)), list)


def test_the_remembered_layout_only_answers_for_itself() -> None:
    """_shape remembers the last rectangle; a ragged layout of the same length right after it stays a list."""
    rect, ragged = np.arange(300).reshape(100, 3).tolist(), np.arange(300).reshape(100, 3).tolist()
    ragged[10].append(ragged[11].pop())
    for _ in range(2):
        assert check(orjson.dumps({"x": rect}))["x"].shape == (100, 3)
        assert isinstance(check(orjson.dumps({"x": ragged}))["x"], list)
    assert check(orjson.dumps({"x": rect}))["x"].shape == (100, 3)
    assert check(orjson.dumps({"x": np.arange(300).reshape(3, 100).tolist()}))["x"].shape == (3, 100)


@pytest.mark.parametrize("keep_bytes", [None, 1024])
def test_parser_reuse_after_refusals_and_across_threads(monkeypatch: pytest.MonkeyPatch, keep_bytes: int) -> None:
    """A refused array (invalid, not numbers, out of range, an error) must not spoil the next parse, in any
    thread; spans from _KEEP_PARSER_BYTES up get a parser of their own (keep_bytes lowers it to cover both)."""
    if keep_bytes is not None:
        monkeypatch.setattr(fast_json, "_KEEP_PARSER_BYTES", keep_bytes)
    good = [orjson.dumps({"a": np.arange(600).reshape(200, 3).tolist()}),
            orjson.dumps({"b": (np.arange(3000) * 0.25).reshape(1000, 3).tolist(), "c": (np.arange(300) / 7).tolist()})]
    bad = [big(["NaN"]), big(["null"]), big(["1e400"]), big(["1.5", "{}"]), big(["1 2"]), big(["1.5"])[:-1] + b",]",
           ("[" + ",".join(["1"] * SMALL + ["9223372036854775808"]) + "]").encode(), b"[[" + b"1," * SMALL + b"2]"]
    for body in bad + good + bad[::-1] + good:
        check(body)

    def work(seed: int) -> int:
        rng = random.Random(seed)
        arrays = 0
        for _ in range(15):
            body = rng.choice(good + bad)
            ours = check(body)
            arrays += isinstance(ours, dict) and all(isinstance(v, np.ndarray) for v in ours.values())
        return arrays

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(work, range(8))) > 0


# --- shapes --------------------------------------------------------------------------------------------------


def test_image_round_trip() -> None:
    img = np.random.default_rng(0).random((224, 224, 3), dtype=np.float32)
    body = orjson.dumps({"instances": [img.tolist()]})
    ours = loads(body)["instances"]
    assert isinstance(ours, np.ndarray) and ours.shape == (1, 224, 224, 3) and ours.dtype == np.float64
    np.testing.assert_array_equal(ours, np.asarray([img.tolist()]))
    pixels = np.random.default_rng(1).integers(0, 256, (224, 224, 3))
    ours = loads(json.dumps({"instances": pixels.tolist()}).encode())["instances"]
    assert ours.dtype == np.int64 and (ours == pixels).all()


@pytest.mark.parametrize(
    "shape", [(100,), (1, 100), (10, 1, 10), (2,) * 8, (70, 1), (3, 2, 1, 20), (1,) * 30 + (60,), (1,) * 33 + (60,)]
)
def test_shapes(shape: tuple[int, ...]) -> None:
    arr = np.arange(int(np.prod(shape))).reshape(shape) * 0.25
    ours = check(orjson.dumps({"a": arr.tolist()}))["a"]
    assert isinstance(ours, np.ndarray) == (len(shape) <= 32)
    assert not isinstance(ours, np.ndarray) or ours.shape == shape


@pytest.mark.parametrize(
    "text",
    ["[[1,2],[3]]", "[[1,2],3]", "[1,[2,3]]", "[[1,2],[3,4,5]]", "[[],[]]", "[[1],[]]", "[[[1]],[2]]", "[1,null]",
     '[1,"2"]', "[1,true]", "[[1,2],[3,{}]]", "[NaN,1]", "[Infinity]", "[[1,2],[3,4]]"],
)
def test_ragged_and_mixed_stay_lists(text: str) -> None:
    inner = text[1:-1]
    body = ("[" + ",".join([inner] * (SMALL // len(inner) + 1)) + "]").encode()
    ours = check(body)
    assert isinstance(ours, np.ndarray) == (text == "[[1,2],[3,4]]")


def test_big_rectangular_children_of_ragged_parent() -> None:
    body = orjson.dumps([np.ones((10, 30)).tolist(), np.ones((20, 10)).tolist(), [1]])
    ours = check(body)
    assert [type(v) for v in ours] == [np.ndarray, np.ndarray, list]


RECT = np.arange(120).reshape(40, 3).tolist()


@pytest.mark.parametrize(
    ("doc", "one"),
    [
        ({"instances": [RECT]}, True),
        ({"signature_name": "a[0]", "inputs": {"x": RECT}, "note": "]"}, True),  # brackets in strings around it
        ({"k[": 1, "k]": 2, "a": {"b": RECT}}, True),
        ([RECT, RECT], True),  # a top-level array, rectangular as a whole
        ({"a": RECT, "b": RECT}, False),  # two arrays: a key between them
        ({"a": RECT, "b": [1]}, False),
        ([RECT, np.arange(90).reshape(30, 3).tolist()], False),  # ragged as a whole: its children are found
        ({"a": [[1, 2]] * 60 + [[3]]}, False),
        ({"a": [1.5] * 100 + [None]}, False),
        ({f"[{i}]": i for i in range(9)} | {"a": RECT}, False),  # more bracketed keys than it looks past
        ({"a": "[" * 300}, False),
        # one dimension: no layout, simdjson counts the numbers
        ({"inputs": {"x": list(range(300))}}, True),
        ({"instances": [0.5, -1.25e-7] * 100}, True),
        ({"a": [1.5] * 100 + [True]}, False),
        ({"a": [1.5] * 100 + [{}]}, False),
        ({"a": list(range(100)) + [2**63]}, False),  # past int64: stays a list
        # the Open Inference Protocol's flat `data`, after the shape's array: the one big array between two strings
        ({"inputs": [{"name": "x", "shape": [300], "datatype": "FP32", "data": [0.5] * 300}]}, True),
        ({"inputs": [{"name": "x", "shape": [300], "datatype": "FP32", "data": [0.5] * 300}],  # as tritonclient
          "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}, True),
        ({"inputs": [{"name": "x", "shape": [40, 3], "datatype": "FP32", "data": RECT}]}, False),  # nested: scan
        ({"inputs": [{"name": n, "shape": [300], "datatype": "FP32", "data": [0.5] * 300} for n in "ab"]}, False),
        (["s", [0.5] * 300, [0.25] * 300], False),  # another big array after it
        ({"a": [0.5] * 300, "b": "s", "c": [0.25] * 300}, False),  # and one in another stretch
    ],
)
def test_one_big_array_skips_the_scan(reader: str, monkeypatch: pytest.MonkeyPatch, doc: Any, one: bool) -> None:
    """The common document takes _one_span; any other leaves it to the scan, and both agree with the plain path."""
    body = orjson.dumps(doc)
    q = fast_json._quotes(body, np.frombuffer(body, np.uint8))
    assert bool(fast_json._one_span(body, q)) == (one and reader == "simdjson")
    ours = check(body)
    monkeypatch.setattr(fast_json, "_one_span", lambda body, q: [])
    assert [type(v) for v in _leaves(ours)] == [type(v) for v in _leaves(check(body))]


def _rows_doc(kind: str) -> bytes:
    rng = np.random.default_rng(3)
    imgs = rng.random((6, 10, 10, 3)).round(6)
    if kind.startswith("compact"):
        return orjson.dumps({"instances": imgs.tolist()})
    if kind == "spaced":
        return json.dumps({"instances": imgs.tolist()}).encode()
    if kind == "indented":  # whitespace inside the runs of brackets: rows are not cut, the numpy path reads it
        return json.dumps({"instances": imgs.tolist()}, indent=1).encode()
    if kind == "ints":
        return orjson.dumps({"instances": rng.integers(-(10**6), 10**6, (6, 10, 10, 3)).tolist()})
    if kind == "ints then floats":  # one dtype for all rows, as if parsed at once
        rows = [rng.integers(0, 9, (10, 10, 3)).tolist() for _ in range(5)] + [imgs[0].tolist()]
        return orjson.dumps({"instances": rows})
    if kind.startswith("uneven"):  # a short row first: nothing where its end should be, or a later row's end
        rows = [np.zeros((10, 10, 3), int).tolist()] + [imgs[i].tolist() for i in range(1, 6)]
        return orjson.dumps({"instances": rows})
    if kind.startswith("a last row"):  # as many numbers as the others, in far more bytes (trailing zeros)
        last = re.sub(rb"([0-9]\.[0-9]+)", rb"\g<1>000000000000", orjson.dumps((imgs[5] + 1).tolist()))
        return b'{"instances": [' + b",".join([orjson.dumps(r) for r in imgs[:5].tolist()] + [last]) + b"]}"
    if kind == "nan":
        return orjson.dumps({"instances": imgs.tolist()}).replace(b"]]]]", b",NaN]]]]")
    if kind == "many small rows":
        return orjson.dumps({"instances": rng.random((3000, 1)).tolist()})
    return orjson.dumps({"instances": rng.random(2000).tolist()})  # one dimension: nothing to cut


@pytest.mark.parametrize(
    ("kind", "cut"),
    [("compact", True), ("spaced", True), ("indented", False), ("ints", True), ("ints then floats", True),
     ("uneven", True), ("uneven, wide window", True), ("nan", False), ("many small rows", False), ("flat", False),
     ("compact, over _ROWS_MAX_BYTES", False), ("a last row over _SIMD_MAX_BYTES", False)],
)
def test_a_span_too_big_for_one_parse_is_read_a_row_at_a_time(
    reader: str, monkeypatch: pytest.MonkeyPatch, kind: str, cut: bool
) -> None:
    """Past _SIMD_MAX_BYTES (lowered here) the rows of the first dimension are parsed one by one; whatever cannot
    be cut so goes the numpy path, and both agree with the plain path."""
    monkeypatch.setattr(fast_json, "_SIMD_MAX_BYTES", 4096)
    if kind == "uneven, wide window":
        monkeypatch.setattr(fast_json, "_ROW_WINDOW", 2)
    if kind.endswith("_ROWS_MAX_BYTES"):
        monkeypatch.setattr(fast_json, "_ROWS_MAX_BYTES", 8192)
    body = _rows_doc(kind)
    results: list[bool] = []
    real = fast_json._simd_rows

    def spy(*args: Any) -> np.ndarray | None:
        out = real(*args)
        results.append(out is not None)
        return out

    monkeypatch.setattr(fast_json, "_simd_rows", spy)
    ours = check(body)
    assert (results == [True]) == (cut and reader == "simdjson"), results
    if kind in ("indented", "flat"):  # declined before the layout was built: '[' is not followed by a row
        assert results == []
    if kind == "ints then floats":
        assert ours["instances"].dtype == np.float64


def _leaves(doc: Any) -> list[Any]:
    if isinstance(doc, dict):
        return [x for v in doc.values() for x in _leaves(v)]
    if isinstance(doc, list) and doc and isinstance(doc[0], (list, dict, np.ndarray)):
        return [x for v in doc for x in _leaves(v)]
    return [doc]


def test_small_arrays_stay_lists() -> None:
    ours = check(orjson.dumps({"a": [[1.5, 2.5]] * 3, "b": "x" * SMALL}))
    assert isinstance(ours["a"], list)


def test_whitespace_layouts() -> None:
    arr = np.random.default_rng(2).random((10, 30)).round(5)
    for body in (json.dumps(arr.tolist()), json.dumps(arr.tolist(), indent=2), json.dumps(arr.tolist(), indent="\t")):
        ours = check(body.encode())
        assert isinstance(ours, np.ndarray)


def test_strings_that_look_like_arrays_and_placeholders() -> None:
    arr = np.arange(300).tolist()
    doc = {"s": "[1,2,3]", "t": '"],[', "u": "\u0000" + "0", "v": "\\u0000", "a": arr, "b": {"c": arr}}
    ours = check(orjson.dumps(doc))
    assert isinstance(ours["b"]["c"], np.ndarray) or "\u0000" in ours["u"]
    body = orjson.dumps({"a": arr, "k": "x"}).replace(b'"k"', b'"\\u00000"')  # a key equal to a placeholder
    assert isinstance(check(body)["a"], list)
    check(b'{"a": 1, "b": [' + b"1," * SMALL + b'1], "c": "\\"[1,2]\\\\"}')


def test_arrays_in_key_position_and_duplicate_keys() -> None:
    arr = ",".join(["1"] * SMALL)
    check(("{[" + arr + "]: 1}").encode())
    ours = check(('{"a": [' + arr + '], "a": [' + arr + ",2]}").encode())
    assert len(ours["a"]) == SMALL + 1


def test_many_exponents_quotes_and_escapes() -> None:
    rng = random.Random(5)
    tokens = [f"{rng.uniform(-9, 9):.6e}" for _ in range(600)] + ["1E+2", "-3e-0007", "0e0", "5E00"]
    ours = check(big(tokens))
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64
    keys = {f'k"{i}\\': [i, "]"] for i in range(300)}  # > 256 quotes, escaped quotes and backslashes
    ours = check(orjson.dumps({**keys, "a": np.arange(400).reshape(20, 20).tolist(), "s": '\\"\\\\"'}))
    assert isinstance(ours["a"], np.ndarray)


def test_bytes_like_input_and_deep_nesting() -> None:
    body = orjson.dumps({"a": np.arange(200).tolist()})
    assert isinstance(loads(bytearray(body))["a"], np.ndarray)
    assert isinstance(loads(memoryview(body))["a"], np.ndarray)
    deep = b"[" * 100 + b",".join([b"1"] * 300) + b",[2]" + b"]" * 100  # ragged at the bottom, 100 levels
    check(deep)
    check(b"[" * 2000 + b"]" * 2000)  # orjson's recursion limit: an error in both


# --- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"   ", b"\n\t\r "])
def test_empty_body(body: bytes) -> None:
    with pytest.raises(JsonParseError) as info:
        loads(body)
    assert (info.value.reason, info.value.offset) == ("The document is empty.", 0)


@pytest.mark.parametrize(
    "bad",
    ["1,,2", "1,2,", ",1", "01", "1.", ".5", "1 2", "--1", "1e", "1e+", "1.2.3", "1e5e5", "+1", "1-2", "0x10",
     "1_000", "infinity", "nan", "1e5.5", "-", "1.e5", "00", "-01", "1ee5", "[1]2", "[1][2]", "1]", "[1", "1e-+5"],
)
def test_malformed_numbers_inside_big_arrays(bad: str) -> None:
    for body in (big([bad]), big([bad], ", "), big([bad]).replace(b"[", b"[[", 1) + b"]"):
        with pytest.raises(JsonParseError) as info:
            loads(body)
        assert 0 < info.value.offset <= len(body)
        with pytest.raises(ValueError):
            plain(body)


ARRAY = "Missing a comma or ']' after an array element."
OBJECT = "Missing a comma or '}' after an object member."
NAME = "Missing a name for object member."
COLON = "Missing a colon after a name of object member."
INVALID = "Invalid value."


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"[1,2,]", INVALID), (b"[1,,2]", INVALID), (b"[1 2]", ARRAY), (b'{"a" 1}', COLON), (b'{"a":1 "b":2}', OBJECT),
     (b"[1] 2", "The document root must not be followed by other values."), (b'{"a":1,}', NAME),
     (b"[1e400]", "Number too big to be stored in double."), (b"[1.]", "Missing fraction part in number."),
     (b'["abc', "Missing a closing quotation mark in string."), (b"{1: 2}", NAME), (b"[1,2", ARRAY),
     (b'{"a":1', OBJECT), (b'{"a"', COLON), (b"{", NAME), (b'{"a":', INVALID), (b"[", INVALID), (b"tru", INVALID),
     (b'["\\x"]', "Invalid escape character in string."), (b'[{"a": [1, 2]', OBJECT), (b'{"a": [1, {"b": 2}', ARRAY),
     (b"[NaN, 1 2]", ARRAY), (b'{"x": NaN "y": 1}', OBJECT), (b'["a\x01"]', "Invalid encoding in string.")],
)
def test_error_reasons(body: bytes, reason: str) -> None:
    with pytest.raises(JsonParseError) as info:
        loads(body)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_error_offsets_are_bytes() -> None:
    with pytest.raises(JsonParseError) as info:
        loads('["é", 1,,]'.encode())
    assert info.value.offset == 9


def test_nan_and_infinity_tokens() -> None:
    ours = loads(b'{"a": [NaN, Infinity, -Infinity, 1]}')
    assert math.isnan(ours["a"][0]) and ours["a"][1:] == [math.inf, -math.inf, 1]
    body = b'{"n": NaN, "a": ' + big(["1.5"]) + b"}"
    assert isinstance(check(body)["a"], np.ndarray)


def test_real_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    small = orjson.dumps({"a": np.ones((10, 10)).tolist()})
    assert isinstance(loads(small)["a"], list)
    size = int(fast_json.MIN_FAST_BYTES**0.5)
    assert isinstance(loads(orjson.dumps({"a": np.ones((size, size)).tolist()}))["a"], np.ndarray)
