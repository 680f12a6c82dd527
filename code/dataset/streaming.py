"""Bounded-memory reading of large gzipped JSON-lines files (Amazon Books) and seeded user sampling.

Books 5-core has ~27M reviews; holding them with their text would take tens of GB. The reader keeps
only the fields asked for, applies the user sample *while streaming*, and the review text is fetched in
a second pass for just the rows that need a reference (:func:`lookup_reviews`).
"""

from __future__ import annotations

import dataclasses
import gzip
import heapq
import json
import zlib
from pathlib import Path
from typing import Callable, Iterator

from ..common.errors import InputError


@dataclasses.dataclass(frozen=True)
class UserSample:
    """Which users a local run keeps: a seeded hash decides, so the sample does not depend on file order.

    ``sample_frac``: users whose hash falls below the fraction; ``max_users``: of those, the ``max_users``
    with the smallest hashes (a bottom-k sketch: memory holds at most ``max_users`` users' rows).
    """
    max_users: int | None = None
    sample_frac: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.sample_frac is not None and not 0 < self.sample_frac <= 1:
            raise InputError("--sample_frac", "a fraction in (0, 1]", str(self.sample_frac))
        if self.max_users is not None and self.max_users < 1:
            raise InputError("--max_users", "a positive integer", str(self.max_users))

    @property
    def active(self) -> bool:
        return self.max_users is not None or (self.sample_frac is not None and self.sample_frac < 1)

    def user_hash(self, user: str) -> float:
        """A seeded hash of the user id in [0, 1)."""
        return zlib.crc32(f"{self.seed}\x1f{user}".encode()) / 2**32


def iter_json_lines(path: Path, what: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each line of a gzipped JSON-lines file; a clear error on a bad file."""
    lineno = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(path, f"{what}: one JSON object per line",
                                     f"invalid JSON on line {lineno} ({err.msg})",
                                     "The file is corrupt; delete it and download again.") from None
                if not isinstance(obj, dict):
                    raise InputError(path, f"{what}: one JSON object per line", f"{type(obj).__name__} on line {lineno}")
                yield lineno, obj
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"{what}: a complete gzip stream",
                         f"{'a truncated' if isinstance(err, EOFError) else 'an unreadable'} file after line {lineno} "
                         f"({type(err).__name__}: {err})",
                         "The download was interrupted or the file is corrupt; delete it and download again.") from None


def sample_rows(rows: Iterator[tuple[str, tuple]], sample: UserSample) -> Iterator[tuple]:
    """Yield the rows of the sampled users, in input order. ``rows`` yields (user, row) pairs.

    Without a sample the rows pass straight through (nothing buffered here).

    With ``max_users`` this is a bottom-k sketch: a heap of the kept users' hashes; a user with a smaller
    hash than the largest kept one replaces it and the evicted user's rows are dropped, so memory stays
    at ``max_users`` users whatever the file size.
    """
    frac = sample.sample_frac if sample.sample_frac is not None else 1.0
    if not sample.active:
        for _, row in rows:
            yield row
        return
    kept: dict[str, list[tuple[int, tuple]]] = {}
    heap: list[tuple[float, str]] = []  # (-hash, user): the root is the kept user with the largest hash
    order = 0
    for user, row in rows:
        order += 1
        bucket = kept.get(user)
        if bucket is not None:
            bucket.append((order, row))
            continue
        # Not kept (yet): rehashing is cheaper than a set of every rejected id. The threshold only falls,
        # so a rejected or evicted user is rejected again on each of its later rows.
        h = sample.user_hash(user)
        if h >= frac:
            continue
        if sample.max_users is not None and len(heap) >= sample.max_users:
            if h >= -heap[0][0]:
                continue
            _, evicted = heapq.heapreplace(heap, (-h, user))
            del kept[evicted]
        else:
            heapq.heappush(heap, (-h, user))
        kept[user] = [(order, row)]
    for _, row in sorted((x for b in kept.values() for x in b), key=lambda x: x[0]):
        yield row


def lookup_reviews(path: Path, wanted: set[tuple[str, str]], fields: tuple[str, ...] = ("reviewText", "summary"),
                   what: str = "Amazon reviews") -> dict[tuple[str, str], str]:
    """Second streaming pass: the review text of each wanted (reviewerID, asin) pair (first occurrence)."""
    out: dict[tuple[str, str], str] = {}
    if not wanted:
        return out
    for _, obj in iter_json_lines(path, what):
        key = (obj.get("reviewerID"), obj.get("asin"))
        if key in wanted and key not in out:
            out[key] = next((str(obj[f]) for f in fields if isinstance(obj.get(f), str) and obj[f].strip()), "")
            if len(out) == len(wanted):
                break
    return out


ReviewLookup = Callable[[set[tuple[str, str]]], dict[tuple[str, str], str]]
