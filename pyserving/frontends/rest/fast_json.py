"""JSON decoding that turns big numeric arrays straight into numpy arrays.

A 224x224x3 float image is ~3 MB of JSON: orjson builds 150k floats and 50k lists, and np.asarray walks them
again. Here each big all-number '[...]' is found from the raw bytes (its bracket-and-comma layout gives its
shape and proves it rectangular), its numbers are read by simdjson (pysimdjson) straight into one buffer, the
rest of the document ("skeleton", one placeholder per array) is parsed by orjson, and the arrays are put back.
The usual document, one big array between its first '[' and last ']', skips the search for spans (_one_span);
so does the Open Inference Protocol's, a flat array between two of its strings.
Where simdjson is not installed or refuses an array, vectorised numpy reads it (SWAR digit decoding, exact
float64 rounding). Anything unusual falls back to the plain path, which also reports errors, so results and
errors always match it.

Arrays that stay lists although rectangular: ones holding NaN/Infinity or empty lists, nested over 32 deep,
int arrays with a value outside int64, and (numpy path only) arrays where over 1/16 of the numbers have more
than 19 significant digits (those go through float() one by one, so orjson is faster).
"""

from __future__ import annotations

import json
import re
import threading
from fractions import Fraction
from typing import Any

import numpy as np
import orjson

try:
    import simdjson as _simdjson  # pysimdjson: a declared dependency, but the numpy path below gives the same answers
except ImportError:  # pragma: no cover
    _simdjson = None

# Measured (CPU ms, median): the numpy path costs ~250 us fixed plus ~70 ns per float (~45 per int); orjson +
# np.asarray ~45 ns per number plus ~250 ns per list, more once gc and cache misses kick in on big documents.
# Arrays of short rows (images) break even near 128 KiB and win 2-3x at megabytes, int arrays win from ~40 KiB,
# but float arrays with long rows (>= ~10) stay ~25% slower up to megabytes. With simdjson reading the numbers
# (~45 ns per float, plus ~30 for the layout scan): images win from ~64 KiB (128 KiB: 0.46 vs 0.69 ms of orjson
# + asarray), rows of 20 floats break even at 128 KiB (0.48 vs 0.44) and win 1.6x at 3 MB, ints win from ~20 KiB.
# The article's CNN body (3 MB, 224x224x3 17-digit floats), json_codec.parse_body, median of 5: 12-17 ms with
# simdjson, 31-35 ms numpy path, orjson 33 ms (+14 for np.asarray). The threshold stays where both paths pay.
# _one_span then took it from 8.6 to 7.2 ms (CPU, median of 15, interleaved with the old code), the remembered
# layout (_shape) another 7% (6.7 -> 6.3 ms): what is left is simdjson (~60%) and bytes.translate (~30%).
MIN_FAST_BYTES = 128 << 10
_MAX_DEPTH = 1024  # orjson's nesting limit
_DEEP = b"[" * _MAX_DEPTH

# glibc returns freed heap above its trim threshold to the OS, so a process that never freed a big block pays a
# page fault per 4 KiB of every decode's temporaries (+40% in a VM). Freeing one 16 MiB block raises the dynamic
# mmap/trim thresholds, as any long-running numpy or TensorFlow process has done anyway.
np.empty(16 << 20, np.uint8)


class JsonParseError(ValueError):
    """A malformed JSON document. `.reason` is a rapidjson-style message, `.offset` the byte offset."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (at offset {offset})")
        self.reason = reason
        self.offset = offset


class _Fallback(Exception):
    """The fast path cannot reproduce the plain path's answer (a number overflows): use the plain path."""


_WS = b" \t\n\r"
_WS_BYTES = np.frombuffer(_WS, np.uint8)
_CHUNK = 1 << 16  # ",[]" per vectorised batch: temporaries stay cache-sized and get recycled between batches
_BLOCK = 1 << 18  # bytes per scan block, for the same reason
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(rb"-?[0-9]+")
_NONFINITE = re.compile(rb"NaN|Infinity")

# Allowed neighbours in an array's ",[]" sequence, keyed (left&3 << 3) | (right&3 << 1) | (a number between).
# byte & 3: ',' -> 0, ']' -> 1, '[' -> 3. "[]" may hold a number or not; empty lists fail the count check.
_GRAMMAR = np.zeros(32, bool)
for _l, _r, _num in ((3, 3, 0), (3, 1, 0), (3, 1, 1), (3, 0, 1), (0, 3, 0), (0, 0, 1), (0, 1, 1), (1, 0, 0), (1, 1, 0)):
    _GRAMMAR[_l << 3 | _r << 1 | _num] = True
# Per mantissa length L: keep the last L bytes of a 24-byte row.
_KEEP = ((np.arange(24)[None, :] >= 24 - np.arange(25)[:, None]) * 255).astype(np.uint8).view(np.uint64)
# By frexp exponent of a dot marker (8 * column + 1; 0 = no dot): digits after the dot, and the divisor and
# multiplier that remove 9 * int_part * 10**nfrac (the surplus from reading the dot as a '0').
_DOT_NFRAC = np.zeros(186, np.int64)
_DOT_DIV = np.full(186, 10**19, np.uint64)
_DOT_MUL = np.zeros(186, np.uint64)
for _c in range(24):
    _DOT_NFRAC[8 * _c + 1], _DOT_DIV[8 * _c + 1] = 23 - _c, 10 ** min(24 - _c, 19)
    _DOT_MUL[8 * _c + 1] = 9 * 10 ** min(23 - _c, 18)
# 10**e, e in [_EMIN, _EMAX], as an unevaluated sum hi + lo (~106 bits), hi split in 26-bit halves (Dekker);
# the range keeps every partial product of m * 10**e (m < 1e19) normal. Plus exact factors for Clinger's path.
_EMIN, _EMAX = -275, 280
_E = range(_EMIN, _EMAX + 1)
_P_HI = np.array([float(Fraction(10) ** e) for e in _E])
_P_LO = np.array([float(Fraction(10) ** e - Fraction(h)) for e, h in zip(_E, _P_HI.tolist())])
_SPLIT = 134217729.0  # 2**27 + 1
_P_HH = _SPLIT * _P_HI - (_SPLIT * _P_HI - _P_HI)
_P_HL = _P_HI - _P_HH
_EXACT_MUL = np.array([10.0**e if 0 <= e <= 22 else 1.0 for e in _E])
_EXACT_DIV = np.array([10.0**-e if -22 <= e < 0 else 1.0 for e in _E])
_U = np.uint64


def loads(body: bytes) -> Any:
    """Parse one JSON document like orjson.loads, with two differences:
    - bare NaN, Infinity and -Infinity tokens are accepted (as TF Serving's rapidjson does);
    - every rectangular all-number array whose text spans at least MIN_FAST_BYTES comes back as a C-contiguous
      numpy array of its nesting shape: int64 when every number is an integer literal that fits, else float64
      (values exactly as np.asarray of orjson's lists). Ragged, mixed and small arrays stay lists.
    Malformed JSON raises JsonParseError (a number overflowing float64 is an error too, as in orjson)."""
    body = bytes(body)  # bytearray / memoryview too
    if not body.strip(_WS):
        raise JsonParseError("The document is empty.", 0)
    # A decoded user string could equal a placeholder ("\x00" + index) only if the body has a "\u0000" escape.
    if len(body) < MIN_FAST_BYTES or (b"\\" in body and b"\\u0000" in body) or _DEEP in body:
        return _plain(body)  # (a run of 1024 '[' is past orjson's limit: it refuses that in microseconds)
    try:
        spans = _fast_spans(body)
    except _Fallback:
        spans = []
    if not spans:
        return _plain(body)
    pieces, arrays, pos = [], {}, 0
    for k, (lo, hi, arr) in enumerate(spans):
        pieces += (body[pos:lo], b'"\\u0000%d"' % k)
        arrays["\x00%d" % k] = arr
        pos = hi + 1
    pieces.append(body[pos:])
    try:
        doc = _plain(b"".join(pieces))
    except JsonParseError:
        return _plain(body)  # report the error at the original document's offsets
    if isinstance(doc, str):
        return arrays.get(doc, doc)
    stack = [doc]
    while stack:  # put the arrays back (iteratively: documents may nest deeper than Python recursion)
        node = stack.pop()
        if isinstance(node, dict):
            if any(k[:1] == "\x00" for k in node):
                return _plain(body)  # an array where a key belongs: let the plain path report it
            items: Any = node.items()
        else:
            items = enumerate(node)
        for k, v in items:
            if type(v) is str:
                if v[:1] == "\x00":
                    node[k] = arrays[v]
            elif isinstance(v, (list, dict)):
                stack.append(v)
    return doc


def _fast_spans(body: bytes) -> list[tuple[int, int, np.ndarray]]:
    """(first, last byte, array) of every outermost '[...]' that is a big rectangular numeric array."""
    b = np.frombuffer(body, np.uint8)
    q = _quotes(body, b)
    if q.size % 2 or b.size - int((q[1::2] - q[::2]).sum()) < MIN_FAST_BYTES:
        return []  # unbalanced strings (the plain path reports it), or mostly strings (base64 images)
    one = _one_span(body, q)
    if one:
        return one
    S = _structural(b)
    T = b[S]
    if q.size and (np.searchsorted(S, q[1::2]) != np.searchsorted(S, q[::2])).any():
        S = S[np.searchsorted(q, S) % 2 == 0]  # drop ",[]" inside strings
        T = b[S]
    bi = np.flatnonzero(T != 44)
    B, opening = S[bi], T[bi] == 91
    depth = np.cumsum(np.where(opening, np.int32(1), np.int32(-1)))
    if not B.size or depth[-1] != 0 or depth.min() < 0 or depth.max() > _MAX_DEPTH:
        return []  # (too deep: orjson refuses it in microseconds; looking for spans took seconds per 1M levels)
    spans, parents, level = [], None, 1
    while True:  # outermost first; look inside big arrays that did not qualify (ragged, or holding objects)
        o, c = B[opening & (depth == level)], B[~opening & (depth == level - 1)]
        if o.size != c.size:
            return []
        keep = c - o + 1 >= MIN_FAST_BYTES
        if parents is not None:
            j = np.searchsorted(parents[:, 0], o) - 1
            keep &= (j >= 0) & (c < parents[np.maximum(j, 0), 1])
        failed = []
        for lo, hi in zip(o[keep].tolist(), c[keep].tolist()):
            i, j = np.searchsorted(S, lo), np.searchsorted(S, hi) + 1
            string_inside = np.searchsorted(q, lo) != np.searchsorted(q, hi)
            arr = None if string_inside else _span_array(body, b, S[i:j], T[i:j])
            if arr is None:
                failed.append((lo, hi))
            else:
                spans.append((lo, hi, arr))
        if not failed or level == 64:  # (deeper than numpy's 64 dimensions: not worth looking)
            return sorted(spans, key=lambda t: t[0])
        parents, level = np.array(failed), level + 1


# Every byte but ",[]": deleting them from a span of numbers leaves the layout _shape reads.
_NOT_LAYOUT = bytes(c for c in range(256) if c not in b",[]")


def _one_span(body: bytes, q: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """The common document, {"instances": [...]} or {"inputs": {"x": [...]}}: one big rectangular array from its
    first '[' to its last ']' (outside strings) holds all the numbers. [] when it is not that document: the scan in
    _fast_spans then decides. Spares that scan's positions of every ',' and bracket (~45% of a 3 MB image's decode).

    With no string between that '[' and that ']', they open and close the same array in a valid document: another
    array ending at that ']' would be a sibling of the first, which takes a key (quotes) in an object or an array
    opened before the first '['. simdjson proves the text between valid and all numbers, the plain parse of the
    rest proves the document; the layout proves the shape."""
    if _simdjson is None:
        return []
    lo, hi = body.find(b"["), body.rfind(b"]")
    for _ in range(8):  # a '[' or ']' inside a key or string value: look past that string
        i = int(np.searchsorted(q, lo, "right"))
        if lo < 0 or i % 2 == 0:
            break
        lo = body.find(b"[", int(q[i]) + 1)
    for _ in range(8):
        i = int(np.searchsorted(q, hi, "right"))
        if hi < 0 or i % 2 == 0:
            break
        hi = body.rfind(b"]", 0, int(q[i - 1]))
    if lo < 0 or hi - lo + 1 < max(MIN_FAST_BYTES, 2) or hi - lo >= _ROWS_MAX_BYTES:
        return []  # (past _ROWS_MAX_BYTES the copy and layout below would add ~2x the span to the numpy path's own)
    if np.searchsorted(q, lo) != np.searchsorted(q, hi) or np.searchsorted(q, lo) % 2:
        # a string between them (two arrays, or an object), or still inside one
        return _flat_between_strings(body, q)
    if body.find(b"[", lo + 1, hi) < 0:
        # One dimension (V2's flat `data`, a column of scalars): no layout to prove, and simdjson counts the
        # numbers (the layout's translate was a quarter of such a decode)
        return _flat(body, lo, hi)
    if hi - lo >= _SIMD_MAX_BYTES and body[lo + 1] != 91:
        return []  # _simd_rows could not cut it (indented): spare the layout, the scan decides
    shape = _shape(body[lo : hi + 1].translate(None, _NOT_LAYOUT))
    n = int(np.prod(shape)) if shape else 0
    if not n:
        return []
    arr = _simd_numbers(body, lo, hi, n) if hi - lo < _SIMD_MAX_BYTES else _simd_rows(body, lo, hi, shape)
    return [] if arr is None else [(lo, hi, arr.reshape(shape))]


def _flat_between_strings(body: bytes, q: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """The Open Inference Protocol's document, {"inputs": [{"name": "x", "shape": [...], "datatype": "FP32",
    "data": [...]}], "outputs": [...]}: one big flat array of numbers in the longest stretch between two strings (the
    shape's '[' came first; tritonclient puts "outputs" or "parameters" after it). No string lies in that stretch,
    so the first ']' after a '[' there, with no '[' between, closes it. It is the only big array when what lies
    outside the stretch is too short to hold one and no other '[' follows it in the stretch (else the scan finds
    them all). `q` holds a string's quotes at least, in pairs (_one_span's caller saw to it)."""
    after = np.concatenate(([-1], q[1::2]))  # each string's closing quote (-1: the document's start)
    before = np.concatenate((q[0::2], [len(body)]))  # the next string's opening quote (or the document's end)
    k = int(np.argmax(before - after))
    start, stop = int(after[k]), int(before[k])
    if len(body) - (stop - start) >= MIN_FAST_BYTES:
        return []
    lo = body.find(b"[", start + 1, stop)
    hi = body.find(b"]", lo + 1, stop) if lo >= 0 else -1
    if hi - lo + 1 < max(MIN_FAST_BYTES, 2) or body.find(b"[", lo + 1, hi) >= 0 or body.find(b"[", hi, stop) >= 0:
        return []
    return _flat(body, lo, hi)


def _flat(body: bytes, lo: int, hi: int) -> list[tuple[int, int, np.ndarray]]:
    """The flat array body[lo : hi+1] read by one simdjson parse; [] past one parse's size, or where simdjson
    refuses it (the scan then decides)."""
    arr = _simd_numbers(body, lo, hi, None) if hi - lo < _SIMD_MAX_BYTES else None
    return [(lo, hi, arr)] if arr is not None and arr.size else []


_ROWS_MAX_BYTES = 64 << 20
"""Spans from this size skip _one_span (and _simd_rows): 21 images of 224x224x3 fit under it."""
_ROW_WINDOW = 64
"""_simd_rows looks for a row's end within 1/_ROW_WINDOW of a row's average length of where it should be."""


def _simd_rows(body: bytes, lo: int, hi: int, shape: tuple[int, ...]) -> np.ndarray | None:
    """The numbers of a span too big for one simdjson parse (its buffers take ~3x the text), read one row of the
    first dimension at a time, each under _SIMD_MAX_BYTES: a batch of images in one request. None where the rows
    cannot be cut so (one-dimensional, a row too big, whitespace inside the runs of brackets): the numpy path then
    decides.

    The layout is proven, so a run of len(shape)-1 ']' followed by ',' is the end of a row and nothing else. Each
    row must then parse as one array of its share of the numbers, and the rows tile the span with ',' and
    whitespace between them."""
    k, rows = len(shape), shape[0]
    if k < 2 or body[lo + 1] != 91 or (hi - lo) // rows < _SIMD_MAX_BYTES >> 7:
        return None  # (many small rows: a parse each would cost more than the numpy path)
    per_row = int(np.prod(shape[1:]))
    floats = _has_floats(body, lo, hi)  # one dtype for all rows, as for one parse
    out = np.empty(rows * per_row, np.float64 if floats else np.int64)
    end_of_row = b"]" * (k - 1) + b","
    start, guess = lo + 1, (hi - lo) // rows
    near = guess // _ROW_WINDOW

    def row_ending(cut: int) -> np.ndarray | None:
        end = cut + k - 2
        if cut < start or end - start >= _SIMD_MAX_BYTES:
            return None
        return _simd_numbers(body, start, end, per_row, floats)

    for i in range(rows):
        if i < rows - 1:
            # Rows of one shape take about the same bytes: look near where this one should end first (a search of
            # the whole row took ~2.4 ms a 3 MB image). What is found there may be a later row's end: its count
            # then fails, and the whole row is searched.
            cut = body.find(end_of_row, max(start + guess - near, start), min(start + guess + near, hi))
            row = row_ending(cut)
            if row is None:
                cut = body.find(end_of_row, start, hi)
                row = row_ending(cut)
        else:
            cut = hi - k + 1  # the last row ends right before the span's own ']'
            row = row_ending(cut)
        if row is None:
            return None
        out[i * per_row : (i + 1) * per_row] = row
        start = cut + k  # past the row's run of ']' and the ','
        while start < hi and body[start] in _WS:
            start += 1
    return out


def _span_array(body: bytes, b: np.ndarray, S: np.ndarray, T: np.ndarray) -> np.ndarray | None:
    """The array for the span whose ",[]" bytes are T = b[S] (S[0] its '[', S[-1] its ']'), or None when it is
    not a rectangular array of valid JSON numbers that fit the result dtype."""
    shape = _shape(T.tobytes())
    n = int(np.prod(shape)) if shape else 0
    if n == 0:
        return None
    lo, hi = int(S[0]), int(S[-1])
    if _simdjson is not None and hi - lo < _SIMD_MAX_BYTES:
        arr = _simd_numbers(body, lo, hi, n)
        if arr is not None:
            return arr.reshape(shape)
    ep = _find_all(body, b, b"eE", lo, hi)
    spaced = b[lo:hi].min() <= 32
    out = np.empty(n, np.float64 if ep.size or body.find(b".", lo, hi) >= 0 else np.int64)
    done = 0
    for j in range(0, S.size - 1, _CHUNK):  # a batch of neighbouring ",[]" pairs and what lies between them
        s, tc = S[j : j + _CHUNK + 1], T[j : j + _CHUNK + 1] & np.uint8(3)
        starts, ends = s[:-1] + 1, s[1:] - 1
        if spaced and not (_trim(b, starts, 1) and _trim(b, ends, -1)):
            return None
        nz = ends >= starts  # a token (whitespace inside one, as in "1 2", fails the digit checks)
        if not _GRAMMAR[(tc[:-1] << np.uint8(3)) | (tc[1:] << np.uint8(1)) | nz].all():
            return None
        k = np.flatnonzero(nz)
        if not k.size:
            continue
        if done + k.size > n:
            return None
        starts, ends = starts[k], ends[k]
        e = ep[np.searchsorted(ep, starts[0]) : np.searchsorted(ep, ends[-1], "right")]
        if not _numbers(body, b, starts, ends, e, out[done : done + k.size]):
            return None
        done += k.size
    return out.reshape(shape) if done == n else None


# One simdjson parser per thread, kept for spans under _KEEP_PARSER_BYTES: a fresh parser's buffers (~14 bytes per
# byte of span, mostly untouched) came from fresh pages, 3.5k page faults and +5 ms per 3 MB body; a kept one
# holds the pages its biggest span touched (9.4 MB RSS measured for the 3 MB image), so bigger spans get their own.
_KEEP_PARSER_BYTES = 4 << 20
_parsers = threading.local()
# simdjson's buffers grow with the span (its padded copy, a structural index and 16 bytes of tape a number: ~3x a
# span of short numbers, more than the numpy path's own temporaries): spans over this go the numpy path, whose
# memory is bounded at 5.5-7.6x the body (tests/test_hostile_limits.py measured 177 MiB for a 15 MiB body of
# 9-character numbers through simdjson, against a bound of 160). Images (3 MB) stay well under.
_SIMD_MAX_BYTES = 8 << 20


def _has_floats(body: bytes, lo: int, hi: int) -> bool:
    return any(body.find(c, lo, hi) >= 0 for c in (b".", b"e", b"E"))


def _simd_numbers(body: bytes, lo: int, hi: int, n: int | None, floats: bool | None = None) -> np.ndarray | None:
    """The n numbers of body[lo : hi+1] read by simdjson (int64 when none has a '.' or an exponent, else
    float64; `floats` decides instead when given), or None where it refuses the text, a number or the count (None:
    any count): the numpy path then decides.

    simdjson rounds exactly like float(); an int element of a float array is cast from int64/uint64, rounding as
    float(int) does, and "-0" is the integer 0 there as in orjson. It flattens nested arrays: the caller has
    checked the bracket-and-comma layout, so n numbers fill exactly that shape."""
    if floats is None:
        floats = _has_floats(body, lo, hi)
    keep = hi - lo < _KEEP_PARSER_BYTES
    parser = getattr(_parsers, "parser", None) if keep else None
    if parser is None:
        parser = _simdjson.Parser()
    else:
        _parsers.parser = None  # taken: should an error below leave a proxy of its document, it could not parse
    try:
        doc = parser.parse(memoryview(body)[lo : hi + 1])
        buf = doc.as_buffer(of_type="d" if floats else "i")
    except (ValueError, TypeError, RuntimeError):
        return None  # invalid JSON, not all numbers, or out of int64 (uint64, double) range
    del doc
    if keep:
        _parsers.parser = parser
    arr = np.frombuffer(buf, np.float64 if floats else np.int64)
    return arr if n is None or arr.size == n else None


def _trim(b: np.ndarray, pos: np.ndarray, step: int) -> bool:
    """Move each position in `pos` past JSON whitespace (in place); False on other control characters."""
    while True:
        c = b[pos]
        w = c <= 32
        if not w.any():
            return True
        if not np.isin(c[w], _WS_BYTES).all():
            return False
        pos += w if step > 0 else -w.astype(pos.dtype)


# The last rectangular layout and its shape: clients send the same shape again and again, and one compare costs
# ~20 us where building the layout again costs ~450 (a 224x224x3 image). Kept only while small.
_last_layout: tuple[bytes, tuple[int, ...]] | None = None
_KEEP_LAYOUT_BYTES = 1 << 20


def _shape(tb: bytes) -> tuple[int, ...] | None:
    """The shape whose exact ",[]" sequence is `tb`, or None when `tb` is not rectangular."""
    global _last_layout
    last = _last_layout
    if last is not None and tb == last[0]:
        return last[1]
    shape = _build_shape(tb)
    if shape is not None and len(tb) <= _KEEP_LAYOUT_BYTES:
        _last_layout = (tb, shape)
    return shape


def _build_shape(tb: bytes) -> tuple[int, ...] | None:
    k = len(tb) - len(tb.lstrip(b"["))
    if k > 32:
        return None
    c = tb.find(b"]") - k + 1  # the first innermost list: its commas + 1
    unit, dims = b"[" + b"," * (c - 1) + b"]", [c]
    for j in range(k - 1, 0, -1):  # the first list at level j (root = 1) is tb[j-1 : e+k-j+1]
        e = tb.find(b"]" * (k - j + 1), k - 1)
        cnt, rem = divmod(e + k - 2 * j + 1, len(unit) + 1)
        if e < 0 or rem or cnt < 1:
            return None
        unit = b"[" + b",".join([unit] * cnt) + b"]"
        dims.append(cnt)
    return tuple(reversed(dims)) if unit == tb else None


def _numbers(
    body: bytes, b: np.ndarray, starts: np.ndarray, ends: np.ndarray, ep: np.ndarray, out: np.ndarray
) -> bool:
    """Parse the JSON numbers b[starts[i] : ends[i]+1] ('e'/'E' at positions ep) into `out`; False if invalid.

    Each mantissa is read as a 24-byte row ending at its last char; bytes before it become digit 0, so does the
    dot (corrected for arithmetically), and SWAR turns each uint64 of 8 digits into its value."""
    neg = b[starts] == 45
    ms = starts + neg
    mend, expo = ends, None
    if ep.size:  # exponents: validate, decode their (few) digits with a small matrix product
        ti = np.searchsorted(starts, ep, "right") - 1
        if (ti[1:] == ti[:-1]).any():
            return False
        mend = ends.copy()
        mend[ti] = ep - 1
        sign = b[ep + 1]
        nd = ends[ti] - ep - ((sign == 43) | (sign == 45))
        dig = _rows(b, ends[ti], 8) - np.uint8(48)
        cols = np.arange(8) >= 8 - nd[:, None]
        if (nd < 1).any() or ((dig >= 10) & cols).any():
            return False
        ev = np.where(cols, dig, 0).astype(np.int64) @ 10 ** np.arange(7, -1, -1)
        expo = np.zeros(starts.size, np.int64)
        expo[ti] = np.where(sign == 45, -ev, ev) + (nd > 4) * (1 << 20)  # > 4 digits: out of range, float()
    L = mend - ms + 1
    if (L < 1).any():
        return False  # "-" or "-e5"
    first, second = b[ms], b[ms + 1]
    zero = first == 48
    if (first == 46).any() or (zero & ((second - np.uint8(48)) < 10)).any():
        return False  # ".5", or a leading zero
    U = _rows(b, mend, 24)
    U -= np.uint8(48)  # digits -> 0..9, '.' -> 254, anything else -> >= 10
    R = U.view(np.uint64)  # (n, 3) words of 8 chars, first char in the low byte
    R &= np.take(_KEEP, np.minimum(L, 24), axis=0)
    dot = U == 254
    ndots = np.count_nonzero(dot)
    if ndots:
        R ^= dot.view(np.uint64) * _U(254)
    if U.max() > 9 or dot[:, 23].any():
        return False  # not digits and dots, or a trailing dot
    for mul, shift, mask in ((2561, 8, 0x00FF00FF00FF00FF), (6553601, 16, 0x0000FFFF0000FFFF), (42949672960001, 32, 0)):
        R *= _U(mul)
        R >>= _U(shift)
        if mask:
            R &= _U(mask)
    slow = (R[:, 0] >= 1000) | (L > 24)  # over 19 significant digits (or 24 chars): float() reads those
    m = R[:, 0] * _U(10**8)
    m += R[:, 1]
    m *= _U(10**8)
    m += R[:, 2]
    if out.dtype == np.int64:
        if slow.any() or (m > _U(2**63 - 1) + neg).any():
            return False  # does not fit int64: keep lists
        out[:] = m.view(np.int64)
        np.negative(out, out=out, where=neg)
        return True
    E = np.zeros(starts.size, np.int64) if expo is None else expo
    if ndots:
        zd = zero & (second == 46) & (L <= 24)  # "0.ddd" (data in [-1, 1]): integer part 0, nfrac = L - 2
        np.subtract(E, L - 2, out=E, where=zd)
        seen = np.count_nonzero(zd)
        j = np.flatnonzero(~zero)
        if j.size:  # other dots: the 0x01 marker byte, read as a float, is 2**(8 * column)
            dw = dot.view(np.uint64)[j]
            col = np.frexp(dw[:, 0] + dw[:, 1] * 2.0**64 + dw[:, 2] * 2.0**128)[1]
            seen += np.count_nonzero(col)
            mj = m[j]
            mj -= mj // _DOT_DIV.take(col) * _DOT_MUL.take(col)
            m[j] = mj
            E[j] -= _DOT_NFRAC.take(col)
        if seen != ndots:
            return False  # a number with two dots
    return _scale(m, E, neg, slow, body, starts, ends, out)


def _scale(m: np.ndarray, E: np.ndarray, neg: np.ndarray, slow: np.ndarray, body: bytes, starts: np.ndarray,
           ends: np.ndarray, out: np.ndarray) -> bool:
    """out = +-m * 10**E, correctly rounded to float64 (as orjson and float() do)."""
    i = E - _EMIN
    if E.min() < _EMIN or E.max() > _EMAX:
        slow |= (E < _EMIN) | (E > _EMAX)
        np.clip(i, 0, _P_HI.size - 1, out=i)
    # Clinger: with m < 2**53 and |E| <= 22 both operands are exact, so one IEEE operation rounds correctly.
    s = np.multiply(m.astype(np.float64), _EXACT_MUL.take(i), out=out)
    s /= _EXACT_DIV.take(i)
    hard = np.flatnonzero((m >= _U(2**53)) | (np.abs(E) > 22))
    if hard.size:
        s[hard], near_tie = _scale_dd(m[hard], i[hard])
        slow[hard] |= near_tie
    np.negative(s, out=s, where=neg)
    slow |= neg & (m == 0)  # "-0" is the integer 0 (+0.0 here) but "-0.0" is -0.0: let the text decide
    bad = np.flatnonzero(slow)
    if bad.size > 16 + s.size // 16:
        return False  # mostly long numbers: orjson beats per-token float()
    for j in bad.tolist():
        tok = body[starts[j] : ends[j] + 1]
        if not _NUMBER.fullmatch(tok):
            return False
        s[j] = float(int(tok)) if _INTEGER.fullmatch(tok) else float(tok)  # as np.asarray converts orjson's int
        if s[j] in (np.inf, -np.inf):
            raise _Fallback
    return True


def _scale_dd(m: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """m * 10**(i + _EMIN) as a ~104-bit double-double product rounded once, and where that is within 2**-95
    (relative) of a rounding boundary so the error could matter (exact ties; float() redoes those)."""
    mh = m.astype(np.float64)
    with np.errstate(invalid="ignore"):  # m >= 2**64 - 1024 rounds to 2**64, out of uint64: slow, float() redoes it
        ml = (m - mh.astype(np.uint64)).view(np.int64).astype(np.float64)  # m == mh + ml exactly
    ph, hh, hl = _P_HI.take(i), _P_HH.take(i), _P_HL.take(i)
    mhh = mh * _SPLIT
    t = mhh - mh
    mhh -= t  # Veltkamp: mh == mhh + mhl, 26 bits each
    mhl = mh - mhh
    p = mh * ph
    err = mhh * hh  # Dekker: p + err == mh * ph exactly
    err -= p
    for x, y in ((mhh, hl), (mhl, hh), (mhl, hl), (mh, _P_LO.take(i)), (ml, ph)):  # last two: ~2**-104 terms
        err += np.multiply(x, y, out=t)
    s = p + err
    r = np.subtract(s, p, out=p)
    np.subtract(err, r, out=r)  # what rounding dropped: s + r == p + err
    np.abs(s, out=t)
    t *= 2.0**-95  # > the product's error: if r pushed that much further out rounds differently, it is a tie
    np.copysign(t, r, out=t)
    t += r
    t += s
    return s, t != s


def _rows(b: np.ndarray, last: np.ndarray, width: int) -> np.ndarray:
    """b[i-width+1 : i+1] for each i in `last` (ascending), zero-filled before b[0]; one memcpy per row."""
    idx = last - (width - 1)
    rows = np.ndarray((b.size - width + 1,), f"V{width}", b, 0, (1,))[np.maximum(idx, 0)]
    rows = rows.view(np.uint8).reshape(-1, width)
    for j in range(int(np.searchsorted(idx, 0))):  # numbers ending within `width` bytes of b[0]
        rows[j] = 0
        rows[j, width - int(last[j]) - 1 :] = b[: int(last[j]) + 1]
    return rows


def _structural(b: np.ndarray) -> np.ndarray:
    """int32 positions of ',', '[' and ']' (and 'Y', '_', which no valid span holds), scanned in blocks."""
    parts = []
    for o in range(0, b.size, _BLOCK):
        blk = b[o : o + _BLOCK]
        m = np.bitwise_and(blk, 0xF9)  # '[' and ']' -> 0x59
        hit = m == 0x59
        np.equal(blk, 44, out=m.view(bool))
        hit |= m.view(bool)
        parts.append(np.flatnonzero(hit).astype(np.int32) + np.int32(o))
    return np.concatenate(parts)


def _find_all(body: bytes, b: np.ndarray, chars: bytes, lo: int, hi: int) -> np.ndarray:
    """Sorted positions of `chars` in body[lo:hi]: memchr while they are few, a numpy scan when many."""
    found: list[int] = []
    for ch in chars:
        i = body.find(ch, lo, hi)
        while i >= 0:
            found.append(i)
            if len(found) > 256:
                return np.flatnonzero(np.isin(b[lo:hi], np.frombuffer(chars, np.uint8))) + lo
            i = body.find(ch, i + 1, hi)
    return np.array(sorted(found), np.int64)


def _quotes(body: bytes, b: np.ndarray) -> np.ndarray:
    """Positions of the '"' that open or close strings (not those escaped by an odd run of backslashes)."""
    q = _find_all(body, b, b'"', 0, b.size)
    if b"\\" not in body:
        return q
    keep = np.ones(q.size, bool)
    for k in np.flatnonzero(b[np.maximum(q - 1, 0)] == 92).tolist():
        p = int(q[k]) - 1
        while p >= 0 and body[p] == 92:
            p -= 1
        keep[k] = (int(q[k]) - 1 - p) % 2 == 0
    return q[keep]


_ARRAY = "Missing a comma or ']' after an array element."
_OBJECT = "Missing a comma or '}' after an object member."
_NAME = "Missing a name for object member."
_REASONS = (  # orjson / json.loads message fragment -> rapidjson's wording, which TF Serving clients see
    ("empty", "The document is empty."), ("expected ',' or ']'", _ARRAY), ("expected ',' or '}'", _OBJECT),
    ("':'", "Missing a colon after a name of object member."), ("string key", _NAME), ("property name", _NAME),
    ("after document", "The document root must not be followed by other values."),
    ("Extra data", "The document root must not be followed by other values."),
    ("infinity", "Number too big to be stored in double."), ("decimal point", "Missing fraction part in number."),
    ("exponent", "Missing exponent in number."), ("Unterminated", "Missing a closing quotation mark in string."),
    ("escape", "Invalid escape character in string."), ("UTF-8", "Invalid encoding in string."),
    ("surrogate", "The surrogate pair in string is invalid."), ("control character", "Invalid encoding in string."),
)


def _plain(body: bytes) -> Any:
    """orjson, or json.loads when bare NaN/Infinity made orjson fail; errors become JsonParseError."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error: json.JSONDecodeError = exc
    if _NONFINITE.search(body):
        try:
            return json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            pass
        except json.JSONDecodeError as exc:
            error = exc
        except RecursionError:
            raise JsonParseError("Invalid value.", 0) from None
    text = error.doc if isinstance(error.doc, str) else body.decode("utf-8", "replace")
    offset = error.pos if body.isascii() else len(text[: error.pos].encode())
    reason = _reason(error.msg, body, offset)
    if "trailing comma" in error.msg:
        # orjson points at the comma; rapidjson, past it and its whitespace, at the value or name it found missing
        offset = len(body) - len(body[offset + 1 :].lstrip(_WS))
    raise JsonParseError(reason, offset) from None


def _reason(msg: str, body: bytes, pos: int) -> str:
    if "trailing comma" in msg:
        return _NAME if body[pos + 1 :].lstrip(_WS)[:1] == b"}" else "Invalid value."
    if "end of data" not in msg and "Expecting ',' delimiter" not in msg:
        return next((reason for fragment, reason in _REASONS if fragment in msg), "Invalid value.")
    # rapidjson's message names what it was inside when the text ran out or a separator was missing.
    head = body[:pos]
    b = np.frombuffer(head, np.uint8)
    q = _quotes(head, b)
    last = head.rstrip(_WS)[-1:]
    if q.size % 2:
        return "Missing a closing quotation mark in string."
    br = np.flatnonzero(np.isin(b, np.frombuffer(b"[]{}", np.uint8)))
    br = br[np.searchsorted(q, br) % 2 == 0]
    opening = (b[br] == 91) | (b[br] == 123)
    depth = np.cumsum(np.where(opening, 1, -1))
    inner = np.flatnonzero(opening & (depth == depth[-1])) if br.size and depth[-1] > 0 else br[:0]
    if last in (b"", b",", b":", b"[") or not inner.size:
        return "Invalid value."
    if b[br[inner[-1]]] == 91:
        return _ARRAY
    if last == b"{":
        return _NAME
    key = last == b'"' and head[: q[-2]].rstrip(_WS)[-1:] in (b"{", b",")
    return "Missing a colon after a name of object member." if key else _OBJECT
