"""Query understanding without a language model: "red shoes under $50" is category shoes,
attribute colour red, a price of at most 50, and nothing left for the text.

Two passes over the query:

* price phrases, by pattern: under/below/less than/up to/max, over/above/more than/from/at least/min,
  between ... and ..., ranges with ``-``/``–``/``to``; amounts with ``$ € £``, an ISO code
  (``50 EUR``, ``USD 50``) or a word (``50 dollars``);
* the tenant's own words (:class:`Vocabulary`: its categories, brands and attribute values, read
  from its products), longest phrase first, each word compared without case and without a plural
  ``s``; then, among the words left, near spellings: a word the vocabulary doesn't hold, of 5
  letters or more, is read as the one word of the vocabulary's one typo away from it (a letter
  added, dropped, changed, or two neighbours swapped; none when two are), and the phrases it makes
  are read as above ("Zephyrene" is brand Zephyrine when no other word of the shop's is one typo
  away). Exact words win: a word the vocabulary holds is never read as another.

What was read comes back as :class:`Understood`: filters a page can show as chips, the near
spellings it read (``corrected``) and the text left, which the semantic and lexical sides search.
A parse is a few dictionary lookups per word, near spellings too (each word of the vocabulary is
indexed by its spellings with a letter or two deleted, SymSpell's way): its cost doesn't grow with
the vocabulary (bench/hybrid.py measures it).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection, text

MAX_PHRASE_WORDS = 4  # a vocabulary phrase longer than this is a description, not a value
MAX_VALUES_PER_KEY = 2000  # attribute keys with more distinct values hold free text: not read
NEAR_MIN_CHARS = 5  # shorter words are read as written only: "red" is one letter from "bed"
VOCABULARY_REFRESH_SECONDS = 1.0  # the least time between two reads of a tenant's changed words

_WORD = re.compile(r"[^\W_]+(?:['’.-][^\W_]+)*", re.UNICODE)
_CUR = (
    r"(?:\$|€|£|¥|(?:dollars?|bucks|euros?|pounds?|yen"
    r"|usd|eur|gbp|jpy|chf|cad|aud|sek|nok|dkk|pln|inr|cny)\b)"
)
_NUM = r"(\d{1,3}(?:[,\s]\d{3})+(?:\.\d+)?|\d+(?:[.,]\d{1,2})?)"
_AMOUNT = rf"(?:{_CUR}\s*)?{_NUM}(?:\s*{_CUR})?"
_MAX = r"(?:under|below|less\s+than|cheaper\s+than|up\s+to|at\s+most|max(?:imum)?|<=?|≤)"
_MIN = r"(?:over|above|more\s+than|from|at\s+least|min(?:imum)?|starting\s+at|>=?|≥)"
_PATTERNS = [
    ("range", re.compile(rf"\bbetween\s+{_AMOUNT}\s+and\s+{_AMOUNT}", re.I)),
    ("range", re.compile(rf"(?:\bfrom\s+)?{_AMOUNT}\s*(?:-|–|—|\bto\b)\s*{_AMOUNT}", re.I)),
    ("max", re.compile(rf"(?:(?<=\s)|^){_MAX}\s*{_AMOUNT}", re.I)),
    ("min", re.compile(rf"(?:(?<=\s)|^){_MIN}\s*{_AMOUNT}", re.I)),
]
_HAS_CURRENCY = re.compile(_CUR, re.I)


def _key(word: str) -> str:
    """A word as the vocabulary compares it: lower case, a plural ``s``/``es`` dropped."""
    word = word.lower()
    if len(word) > 4 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _phrase(value: str) -> tuple[str, ...]:
    return tuple(_key(w) for w in _WORD.findall(value))


def _deletions(word: str) -> set[str]:
    """``word``, and ``word`` with one letter deleted."""
    return {word, *(word[:i] + word[i + 1 :] for i in range(len(word)))}


def _distance(a: str, b: str) -> int:
    """Edits from ``a`` to ``b``: a character added, dropped or changed, or two neighbours swapped
    (optimal string alignment)."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], previous2[j - 2] + 1)
        previous2, previous = previous, row
    return previous[-1]


@dataclass(frozen=True)
class Vocabulary:
    """A tenant's words: phrases (as :func:`_phrase` keys) naming a category, a brand or an
    attribute value (``(key, value)``), each with the value as stored."""

    categories: dict[tuple[str, ...], str] = field(default_factory=dict)
    brands: dict[tuple[str, ...], str] = field(default_factory=dict)
    attributes: dict[tuple[str, ...], tuple[str, str]] = field(default_factory=dict)
    # near spellings: each word of the phrases (5 letters or more), and it with one letter deleted
    # -> the words (a typo's deletions meet its intended word's: SymSpell's index)
    near: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def of(
        cls, categories: Iterable[str], brands: Iterable[str], attributes: Iterable[tuple[str, str]]
    ) -> Vocabulary:
        vocabulary = cls()
        for value in categories:
            vocabulary._add(vocabulary.categories, value, value)
        for value in brands:
            vocabulary._add(vocabulary.brands, value, value)
        for key, value in attributes:
            vocabulary._add(vocabulary.attributes, value, (key, value))
        return vocabulary

    def _add(self, table: dict[tuple[str, ...], Any], value: str, meaning: Any) -> None:
        phrase = _phrase(value)
        if 0 < len(phrase) <= MAX_PHRASE_WORDS and not all(w.isdigit() for w in phrase):
            table.setdefault(phrase, meaning)
            for word in phrase:
                if len(word) >= NEAR_MIN_CHARS and word not in self.near.get(word, ()):
                    for deleted in _deletions(word):  # a word indexed once, whatever phrases hold it
                        self.near.setdefault(deleted, set()).add(word)

    def nearest(self, word: str) -> str | None:
        """The one word of the vocabulary one typo from ``word`` (both of 5 letters or more);
        None when ``word`` is one of its words, or none is that near, or several are."""
        if len(word) < NEAR_MIN_CHARS or word in self.near.get(word, ()):
            return None
        candidates = {found for deleted in _deletions(word) for found in self.near.get(deleted, ())}
        near = [candidate for candidate in candidates if _distance(word, candidate) == 1]
        return near[0] if len(near) == 1 else None

    def __len__(self) -> int:
        return len(self.categories) + len(self.brands) + len(self.attributes)


@dataclass(frozen=True)
class Understood:
    """What a query's words said: the filters read from it and the ``text`` left. ``fallback``:
    those filters matched nothing, so the search ran the query as typed."""

    text: str
    category: str | None = None
    brand: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    price_min: Decimal | None = None
    price_max: Decimal | None = None
    fallback: bool = False
    corrected: dict[str, str] = field(default_factory=dict)  # near spellings read: as typed -> the value

    @property
    def filters(self) -> bool:
        """Whether anything was read besides the text."""
        return bool(
            self.category or self.brand or self.attributes
            or self.price_min is not None or self.price_max is not None
        )  # fmt: skip

    def as_json(self) -> dict[str, Any]:
        """The HTTP API's ``understood``: absent keys were not read."""
        found: dict[str, Any] = {"text": self.text}
        for name in ("category", "brand", "price_min", "price_max"):
            if getattr(self, name) is not None:
                found[name] = getattr(self, name)
        if self.attributes:
            found["attributes"] = dict(self.attributes)
        if self.corrected:
            found["corrected"] = dict(self.corrected)
        found["fallback"] = self.fallback
        return found


def _amount(number: str) -> Decimal | None:
    cleaned = re.sub(r"[,\s](?=\d{3}\b)", "", number)
    cleaned = cleaned.replace(",", ".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def _prices(query: str, given: frozenset[str]) -> tuple[str, Decimal | None, Decimal | None]:
    """The price phrases of ``query``, cut out: the rest, the least and the most price. A bound
    in ``given`` (``price_min``, ``price_max``) is the caller's: phrases of it stay in the text."""
    low = high = None
    for kind, pattern in _PATTERNS:
        match = pattern.search(query)
        if match is None:
            continue
        # a bare range ("2-3") or "from 2" without a currency may be a size, a year, a model
        worded = match.group(0).lower().startswith(("between", "over", "above", "more", "at least", "min"))
        if kind in ("range", "min") and not _HAS_CURRENCY.search(match.group(0)) and not worded:
            continue
        numbers = [_amount(g) for g in match.groups() if g is not None]
        if any(n is None for n in numbers):
            continue
        bounds = {"range": {"price_min", "price_max"}, "max": {"price_max"}, "min": {"price_min"}}[kind]
        if bounds & given:
            continue
        if kind == "range" and len(numbers) == 2:
            low, high = min(numbers), max(numbers)  # type: ignore[type-var]
        elif kind == "max" and high is None:
            high = numbers[0]
        elif kind == "min" and low is None:
            low = numbers[0]
        else:
            continue
        query = query[: match.start()] + " " + query[match.end() :]
    return query, low, high


_QUOTED = re.compile(r'"[^"]*"?')


def parse(query: str, vocabulary: Vocabulary, given: Iterable[str] = ()) -> Understood:
    """``query`` read against ``vocabulary`` (see the module). A quoted phrase and a word after
    ``-`` keep their meaning for the lexical side (a phrase, an exclusion): they are never read.
    ``given``: filters the caller set (``category``, ``brand``, ``price_min``, ``price_max``,
    ``attributes.<key>``), which win over the words: words naming them stay in the text."""
    known = frozenset(given)
    rest, low, high = _prices(query, known)
    quoted = [m.span() for m in _QUOTED.finditer(rest)]
    words = [
        m for m in _WORD.finditer(rest)
        if not any(a <= m.start() < b for a, b in quoted) and not rest[: m.start()].endswith("-")
    ]  # fmt: skip
    keys = [_key(m.group(0)) for m in words]
    taken: list[tuple[int, int]] = []
    used = [False] * len(words)
    category = brand = None
    attributes: dict[str, str] = {}
    corrected: dict[str, str] = {}

    def read(phrase: tuple[str, ...]) -> str | None:
        """Take ``phrase`` as a filter when its kind is still open; the value read."""
        nonlocal category, brand
        attribute = vocabulary.attributes.get(phrase)
        if category is None and "category" not in known and phrase in vocabulary.categories:
            category = vocabulary.categories[phrase]
            return category
        if brand is None and "brand" not in known and phrase in vocabulary.brands:
            brand = vocabulary.brands[phrase]
            return brand
        if attribute and attribute[0] not in attributes and f"attributes.{attribute[0]}" not in known:
            attributes[attribute[0]] = attribute[1]
            return attribute[1]
        return None

    def phrases(keys: list[str], fixed: list[bool] | None) -> None:
        """Read the phrases of ``keys`` not taken yet, longest first; with ``fixed`` (the words
        read as near spellings), only phrases holding one of them (the others were tried)."""
        i = 0
        while i < len(words):
            for size in range(min(MAX_PHRASE_WORDS, len(words) - i), 0, -1):
                if any(used[i : i + size]) or (fixed is not None and not any(fixed[i : i + size])):
                    continue
                if any(words[j].end() != words[j + 1].start() - 1 for j in range(i, i + size - 1)):
                    continue  # the phrase's words must be neighbours, one space apart
                value = read(tuple(keys[i : i + size]))
                if value is None:
                    continue
                start, end = words[i].start(), words[i + size - 1].end()
                if fixed is not None:
                    corrected[rest[start:end]] = value
                taken.append((start, end))
                used[i : i + size] = [True] * size
                i += size - 1
                break
            i += 1

    phrases(keys, None)  # the words as written first: exact words win over near ones
    near = [None if used[j] else vocabulary.nearest(key) for j, key in enumerate(keys)]
    if any(near):
        phrases([n or key for n, key in zip(near, keys, strict=True)], [n is not None for n in near])
    for start, end in sorted(taken, reverse=True):
        rest = rest[:start] + " " + rest[end:]
    return Understood(" ".join(rest.split()), category, brand, attributes, low, high, corrected=corrected)


_VOCABULARY = f"""
    SELECT 'category' AS kind, NULL AS key, category AS value FROM imgsearch.products p
    WHERE category IS NOT NULL {{shop}} GROUP BY category
    UNION ALL
    SELECT 'brand', NULL, brand FROM imgsearch.products p WHERE brand IS NOT NULL {{shop}} GROUP BY brand
    UNION ALL
    SELECT 'attribute', key, value FROM (
        SELECT a.key, a.value #>> '{{{{}}}}' AS value, count(*) OVER (PARTITION BY a.key) AS values_of_key
        FROM imgsearch.products p CROSS JOIN LATERAL jsonb_each(p.attributes) AS a
        WHERE jsonb_typeof(a.value) = 'string' AND char_length(a.value #>> '{{{{}}}}') <= 60 {{shop}}
        GROUP BY a.key, a.value #>> '{{{{}}}}'
    ) AS v WHERE values_of_key <= {MAX_VALUES_PER_KEY}
"""
# every tenant's, or one's (the tenant a bound parameter)
_READ = (text(_VOCABULARY.format(shop="")), text(_VOCABULARY.format(shop="AND p.tenant = :tenant")))


def read(conn: Connection, tenant: str | None = None) -> Vocabulary:
    """The vocabulary of ``tenant``'s products (the transaction's row-level security enforces
    it; named, a Citus cluster asks the shop's node alone), or of every tenant's."""
    categories, brands, attributes = [], [], []
    for kind, key, value in conn.execute(_READ[tenant is not None], {"tenant": tenant}):
        if kind == "category":
            categories.append(value)
        elif kind == "brand":
            brands.append(value)
        else:
            attributes.append((key, value))
    return Vocabulary.of(categories, brands, attributes)


_STAMP = (
    text("SELECT max(updated_at) FROM imgsearch.products"),
    text("SELECT max(updated_at) FROM imgsearch.products WHERE tenant = :tenant"),
)


def stamp(conn: Connection, tenant: str | None = None) -> Any:
    """When ``tenant``'s products (or every tenant's) last changed (an index's last entry): its
    vocabulary is read again only after it moves."""
    return conn.execute(_STAMP[tenant is not None], {"tenant": tenant}).scalar()


class Vocabularies:
    """Each tenant's :class:`Vocabulary`, read again when its products changed (:func:`stamp`),
    at most every :data:`VOCABULARY_REFRESH_SECONDS`. A deleted product's words may linger: a
    filter read from them that matches nothing makes the search fall back to the words as typed."""

    def __init__(self) -> None:
        self._known: dict[str | None, tuple[float, Any, Vocabulary]] = {}
        self._lock = threading.Lock()

    def get(
        self, tenant: str | None, changed: Callable[[], Any], load: Callable[[], Vocabulary]
    ) -> Vocabulary:
        """``tenant``'s vocabulary; ``load()`` reads it when there is none, or when ``changed()``
        (the :func:`stamp` now, asked at most every :data:`VOCABULARY_REFRESH_SECONDS`) differs
        from the one it was read at."""
        now = time.monotonic()
        with self._lock:
            found = self._known.get(tenant)
        if found is not None and now - found[0] < VOCABULARY_REFRESH_SECONDS:
            return found[2]
        stamp = changed()
        vocabulary = found[2] if found is not None and found[1] == stamp else load()
        with self._lock:
            self._known[tenant] = (now, stamp, vocabulary)
        return vocabulary

    def forget(self) -> None:
        with self._lock:
            self._known.clear()
