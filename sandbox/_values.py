"""Values as plain data: encode inside the sandbox, decode in the trusted process.

``encode`` turns a value computed by untrusted code into JSON-able data, reading only the built-in
storage of the built-in types (``int.__int__``, ``list.__iter__``, ``dict.items`` ...), never a method
the program could override. Subclasses of the built-in types become their base value, so an ``int``
subclass with a lying ``__eq__`` ships as the plain int it holds. Objects of any other class cannot
be encoded (the check fails), except a short list of standard-library types, encoded by type.
``decode`` (host side) rebuilds plain Python values from that data with the trusted interpreter's own
classes, so comparing them with ``==`` is Python's ordinary equality on honest objects.
"""

from __future__ import annotations

import collections
import decimal
import fractions
import itertools
import types

MAX_DEPTH = 100


class Unsupported(Exception):
    """A value that cannot be shipped out as plain data."""


class Opaque:
    """A standard-library object with no plain form (a generator, a map object...).

    Equal to nothing but itself, like such objects in Python; its truthiness is what it had inside.
    """

    __slots__ = ("name", "truth")

    def __init__(self, name: str, truth: bool):
        self.name, self.truth = name, truth

    def __bool__(self):
        return self.truth

    def __repr__(self):
        return f"<{self.name} object>"


# Standard-library types shipped as opaque: they have no plain value but are not the program's own.
_OPAQUE = (
    map,
    filter,
    zip,
    enumerate,
    reversed,
    types.GeneratorType,
    type(iter([])),
    type(iter(())),
    type(iter("")),
    type(iter(range(0))),
    type(iter({})),
    type({}.values()),
    itertools.count,
    itertools.chain,
    itertools.islice,
    itertools.permutations,
    itertools.combinations,
    itertools.product,
    itertools.accumulate,
    itertools.groupby,
    itertools.repeat,
    itertools.cycle,
    itertools.starmap,
    itertools.zip_longest,
    itertools.compress,
    itertools.takewhile,
    itertools.dropwhile,
    itertools.filterfalse,
    itertools.combinations_with_replacement,
    types.FunctionType,
    types.BuiltinFunctionType,
    type,
    object,
)

_int, _float, _str, _bytes, _list, _tuple, _dict = int, float, str, bytes, list, tuple, dict
_set, _frozenset, _complex, _bytearray, _bool = set, frozenset, complex, bytearray, bool
_type, _issubclass, _len = type, issubclass, len
_Fraction, _Decimal, _deque = fractions.Fraction, decimal.Decimal, collections.deque
_keys_t, _items_t = type({}.keys()), type({}.items())
_LIMIT = 2**63


def encode(v, depth: int = 0):
    if depth > MAX_DEPTH:
        raise Unsupported("value nested too deeply")
    t = _type(v)
    d = depth + 1
    if v is None or t is _bool:
        return v
    if t is _int:
        return v if -_LIMIT < v < _LIMIT else {"I": _int.__format__(v, "x")}
    if t is _float or t is _str:
        return v
    if t is _list:
        return [encode(x, d) for x in _list.__iter__(v)]
    if t is _tuple:
        return {"t": [encode(x, d) for x in _tuple.__iter__(v)]}
    if t is _dict:
        return {"d": [[encode(k, d), encode(x, d)] for k, x in _dict.items(v)]}
    if t is _set:
        return {"s": [encode(x, d) for x in _set.__iter__(v)]}
    if t is _frozenset:
        return {"f": [encode(x, d) for x in _frozenset.__iter__(v)]}
    if t is _bytes:
        return {"b": _bytes.hex(v)}
    if t is _bytearray:
        return {"ba": _bytearray.hex(v)}
    if t is _complex:
        return {"c": [_complex.real.__get__(v), _complex.imag.__get__(v)]}
    if t is _Fraction:
        return {"Q": [encode(v.numerator, d), encode(v.denominator, d)]}
    if t is _Decimal:
        return {"D": _Decimal.__str__(v)}
    if t is range:
        return {"r": [encode(v.start, d), encode(v.stop, d), encode(v.step, d)]}
    if t is _deque:
        return {"q": [encode(x, d) for x in _deque.__iter__(v)]}
    if t is _keys_t:
        return {"k": [encode(x, d) for x in v]}
    if t is _items_t:
        return {"i": [[encode(k, d), encode(x, d)] for k, x in v]}
    # Subclasses of the built-in types: ship the built-in value they hold, never their methods.
    if _issubclass(t, _int):
        return encode(_int.__int__(v), depth)
    if _issubclass(t, _float):
        return encode(_float.__float__(v), depth)
    if _issubclass(t, _str):
        return _str.__str__(v)
    if _issubclass(t, _tuple):
        return {"t": [encode(x, d) for x in _tuple.__iter__(v)]}
    if _issubclass(t, _list):
        return [encode(x, d) for x in _list.__iter__(v)]
    if _issubclass(t, _dict):
        return {"d": [[encode(k, d), encode(x, d)] for k, x in _dict.items(v)]}
    if _issubclass(t, _frozenset):
        return {"f": [encode(x, d) for x in _frozenset.__iter__(v)]}
    if _issubclass(t, _set):
        return {"s": [encode(x, d) for x in _set.__iter__(v)]}
    if _issubclass(t, _bytes):
        return {"b": _bytes.hex(v)}
    if t in _OPAQUE:
        return {"o": t.__name__, "truth": _bool(v) if t is not type else True}
    try:
        name = _type.__dict__["__name__"].__get__(t)
    except Exception:
        name = "?"
    raise Unsupported(f"a value of type {name!r} is not plain data (int, float, str, list, dict, ...)")


def decode(x, depth: int = 0):
    """Rebuild a value from ``encode``'s output. Raises ValueError on anything malformed."""
    if depth > MAX_DEPTH + 2:
        raise ValueError("nested too deeply")
    d = depth + 1
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, list):
        return [decode(e, d) for e in x]
    if not isinstance(x, dict) or not x:
        raise ValueError("malformed value")
    tag, body = next(iter(x.items()))
    if tag == "I":
        return int(body, 16)
    if tag == "t":
        return tuple(decode(e, d) for e in body)
    if tag == "d":
        return {decode(k, d): decode(e, d) for k, e in body}
    if tag == "s":
        return {decode(e, d) for e in body}
    if tag == "f":
        return frozenset(decode(e, d) for e in body)
    if tag == "b":
        return bytes.fromhex(body)
    if tag == "ba":
        return bytearray.fromhex(body)
    if tag == "c":
        return complex(float(body[0]), float(body[1]))
    if tag == "Q":
        return fractions.Fraction(_need_int(decode(body[0], d)), _need_int(decode(body[1], d)))
    if tag == "D":
        return decimal.Decimal(str(body))
    if tag == "r":
        return range(*(_need_int(decode(e, d)) for e in body))
    if tag == "q":
        return collections.deque(decode(e, d) for e in body)
    if tag == "k":
        return dict.fromkeys(decode(e, d) for e in body).keys()
    if tag == "i":
        return {decode(k, d): decode(e, d) for k, e in body}.items()
    if tag == "o":
        return Opaque(str(body), bool(x.get("truth")))
    raise ValueError(f"unknown tag {tag!r}")


def _need_int(v):
    if type(v) is not int:
        raise ValueError("expected an int")
    return v
