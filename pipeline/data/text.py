"""Real English sentences that ship with Python, a user's own text file, and a fallback tokenizer.

Corpora (``data.corpus``), each a fixed-order tuple without duplicates, available offline everywhere:

* ``pydoc``: ``pydoc_data.topics``, the text of Python's ``help()`` topics - the language reference's
  explanatory English (a few thousand sentences).
* ``docstrings``: the docstrings of a fixed list of pure-Python standard-library modules (their module,
  public classes, functions and methods) - terse API English ("Return the ...", "If *timeout* is
  given ..."). Empty under ``python -OO``, which strips docstrings.
* ``comments``: the full-line ``#`` comments of the same modules' source files - conversational developer
  English ("We can't use X here because ..."). Needs the standard library's ``.py`` sources.
* ``file``: one sample per non-empty line of a UTF-8 text file (``data.path``), in file order.

The built-in corpora never repeat a sentence of an earlier one (pydoc, then docstrings, then comments), so
a plan tuned on one is tried on sentences it has not seen. Counts depend on the Python version (3.11:
1584 pydoc, 5195 docstrings, 2811 comments sentences); under ``-OO`` ``comments`` keeps the few sentences
it shares with the (then empty) ``docstrings``.

Token models without their own tokenizer get a hash tokenizer: every word maps to a fixed id, so the same
sentence always gives the same ids and the id statistics (repeats, sentence lengths, padding) resemble
real text - what matters for int8 calibration of embeddings and attention - even though the ids mean
nothing to a random model.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from pipeline.core.errors import PipelineError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
#: A docstring line that starts a list item, a parameter entry (``x -- ...``, ``x : int``, ``x (int): ...``)
#: or a section (``Args:``): not running prose.
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]\s|\w[\w.,\s]*\s(?:--|:)\s|\w+(?:\s?\([^)]*\))?:(?:\s|$))")
#: A call signature standing alone (``BinOp(expr left, operator op, expr right)``, docstrings of C classes).
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)$")
#: BERT WordPiece conventions: [PAD]=0, [CLS]=101, [SEP]=102, ordinary tokens from about 1000 up.
PAD, CLS, SEP, FIRST_WORD = 0, 101, 102, 1000
#: Built-in corpora, in the order in which later ones drop the sentences of earlier ones.
BUILTIN_CORPORA = ("pydoc", "docstrings", "comments")
#: Every ``data.corpus`` value.
CORPORA = (*BUILTIN_CORPORA, "file")
#: Pure-Python standard-library modules present on every CPython 3.9-3.13 install (none deprecated).
STDLIB_MODULES = (
    "argparse", "ast", "asyncio.base_events", "asyncio.events", "asyncio.futures", "asyncio.locks",
    "asyncio.queues", "asyncio.streams", "asyncio.tasks", "base64", "bdb", "bisect", "calendar", "cmd",
    "codecs", "collections", "concurrent.futures._base", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "dis", "doctest", "email.feedparser",
    "email.headerregistry", "email.message", "email.parser", "email.policy", "email.utils", "enum",
    "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "gettext", "glob", "gzip",
    "heapq", "hmac", "html.parser", "http.client", "http.cookiejar", "http.cookies", "http.server",
    "imaplib", "inspect", "ipaddress", "json.decoder", "json.encoder", "locale", "logging",
    "logging.config", "logging.handlers", "mailbox", "mimetypes", "netrc", "numbers", "optparse",
    "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "pprint",
    "profile", "pstats", "queue", "random", "reprlib", "runpy", "sched", "secrets", "selectors", "shlex",
    "shutil", "smtplib", "socket", "socketserver", "statistics", "string", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "types", "typing",
    "unittest.case", "unittest.loader", "unittest.mock", "urllib.parse", "urllib.request", "uuid",
    "warnings", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "xmlrpc.client", "zipfile",
)


def _keep(sent: str) -> bool:
    # Prose, not code or tables: 5-64 words, mostly letters.
    words = sent.split()
    return 5 <= len(words) <= 64 and sum(c.isalpha() for c in sent) > 0.6 * len(sent)


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """Sentences of 5-64 words from Python's help topics, in a fixed order, without duplicates.

    Returns:
        A few thousand sentences (the exact count depends on the Python version).
    """
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            # Indented paragraphs are code or grammar listings, not prose.
            if para.startswith((" ", "\t")) or "::=" in para:
                continue
            for sent in _SENTENCE_END.split(" ".join(para.split())):
                if _keep(sent):
                    seen.setdefault(sent, None)
    return tuple(seen)


def _docstrings_of(module_name: str) -> Iterator[str]:
    # The module's docstring, then its public classes (with their public methods, properties and
    # __init__) and functions by name; only objects defined in the module, so none is read twice.
    import importlib
    import inspect

    try:
        module = importlib.import_module(module_name)
    except ImportError:  # a build without it (e.g. no _socket): the corpus is smaller, still fixed
        return
    yield module.__doc__ or ""
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isfunction(obj):
            yield obj.__doc__ or ""
        elif inspect.isclass(obj):
            yield obj.__doc__ or ""
            for attr, member in sorted(vars(obj).items()):
                if attr.startswith("_") and attr != "__init__":
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) or isinstance(member, property):
                    yield member.__doc__ or ""


def _docstring_prose(doc: str) -> Iterator[str]:
    # Unindented paragraphs without examples, grammar or list items, split into sentences.
    import inspect

    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = para.splitlines()
        if not lines or para.startswith((" ", "\t")) or "::=" in para or ">>>" in para:
            continue
        if any(_LIST_ITEM.match(line) for line in lines):
            continue
        for sent in _SENTENCE_END.split(" ".join(para.split())):
            if _keep(sent) and sent[0].isupper() and not _SIGNATURE.match(sent):
                yield sent


def _comment_blocks(source: str) -> Iterator[str]:
    # Runs of consecutive full-line comments, joined; a code line or a blank comment ends a run.
    block: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        body = stripped.lstrip("#").strip() if stripped.startswith("#") and not stripped.startswith("#!") else ""
        if body and any(c.isalpha() for c in body) and "coding" not in body[:12]:
            block.append(body)
        elif block:
            yield " ".join(block)
            block = []
    if block:
        yield " ".join(block)


def _stdlib_sources() -> list[Path]:
    # The .py files of STDLIB_MODULES that this install has (packages: their __init__.py).
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for name in STDLIB_MODULES:
        base = root.joinpath(*name.split("."))
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                found.append(path)
                break
    return found


def _unseen(found: Iterable[str], earlier: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    # First occurrences of `found`, in order, minus every sentence of the earlier corpora.
    drop = {s for corpus in earlier for s in corpus}
    seen: dict[str, None] = {}
    for sent in found:
        if sent not in drop:
            seen.setdefault(sent, None)
    return tuple(seen)


@lru_cache(maxsize=1)
def docstring_sentences() -> tuple[str, ...]:
    """Sentences of 5-64 words from the docstrings of :data:`STDLIB_MODULES`, none also in ``pydoc``.

    Returns:
        A few thousand sentences in module-list order, then name order within a module; empty under
        ``python -OO`` (docstrings stripped).
    """
    import sys
    import warnings

    if sys.flags.optimize >= 2:  # -OO keeps only the docstrings of C code: signatures, a corpus unlike the full one
        return ()
    with warnings.catch_warnings():  # importing a module must not print its own deprecation notes
        warnings.simplefilter("ignore")
        found = (s for name in STDLIB_MODULES for doc in _docstrings_of(name) for s in _docstring_prose(doc))
        return _unseen(found, [sentences()])


@lru_cache(maxsize=1)
def comment_sentences() -> tuple[str, ...]:
    """Sentences of 5-64 words ending in ``.``, ``!`` or ``?`` from the ``#`` comments of :data:`STDLIB_MODULES`.

    None is also in ``pydoc`` or ``docstrings``.

    Returns:
        About two thousand sentences in module-list order, then file order; empty where the standard
        library ships without its ``.py`` sources.
    """
    found = (
        sent
        for path in _stdlib_sources()
        for block in _comment_blocks(path.read_text(encoding="utf-8", errors="replace"))
        for sent in _SENTENCE_END.split(" ".join(block.split()))
        if _keep(sent) and sent[0].isupper() and sent[-1] in ".!?"
    )
    return _unseen(found, [sentences(), docstring_sentences()])


def file_sentences(path: str | None) -> tuple[str, ...]:
    """The distinct non-empty lines of the UTF-8 text file ``path`` (whitespace collapsed), in file order.

    Each line is one sample: a sentence or a paragraph (the tokenizer truncates it to the model's length).

    Args:
        path: the file (``data.path``); ``~`` is expanded, relative paths start from the working directory.

    Raises:
        PipelineError: no path, a missing file, a directory, an unreadable or non-UTF-8 file, or one
            without a non-empty line.
    """
    if not path:
        raise PipelineError(
            "data.corpus=file needs data.path", "pass data.path=/path/to/sentences.txt (one sentence or paragraph per line)"
        )
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise PipelineError(
            f"data.corpus=file: {file} {what}",
            "check data.path: a text file, one sentence or paragraph per line (relative paths start from the "
            "working directory)",
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PipelineError(
            f"data.corpus=file: cannot read {file}: {err}",
            "save it as UTF-8 text, one sentence or paragraph per line, or point data.path at another file",
        ) from err
    lines = tuple(s for s in dict.fromkeys(" ".join(line.split()) for line in text.splitlines()) if s)
    if not lines:
        raise PipelineError(
            f"data.corpus=file: {file} has no non-empty line",
            "write one sentence or paragraph per line into it, or point data.path at another file",
        )
    return lines


#: Built-in corpus name -> its sentences.
_BUILTIN: dict[str, Callable[[], tuple[str, ...]]] = {
    "pydoc": sentences,
    "docstrings": docstring_sentences,
    "comments": comment_sentences,
}
#: How a Dataset description names each corpus.
CORPUS_LABELS = {
    "pydoc": "Python's help texts (pydoc_data)",
    "docstrings": "standard-library docstrings",
    "comments": "standard-library source comments",
}


def corpus_sentences(corpus: str, path: str | None = None) -> tuple[str, ...]:
    """The sentences of ``data.corpus``, in a fixed order, without duplicates.

    Args:
        corpus: one of :data:`CORPORA`.
        path: the text file for ``file`` (``data.path``); must be unset for the other corpora.

    Raises:
        PipelineError: an unknown corpus, ``data.path`` with a built-in corpus, a bad file, or a
            built-in corpus this Python lacks (docstrings under ``-OO``, comments without sources).
    """
    if corpus == "file":
        return file_sentences(path)
    if corpus not in _BUILTIN:
        raise PipelineError(f"unknown data.corpus '{corpus}'", f"use one of: {', '.join(CORPORA)}")
    if path:
        raise PipelineError(
            f"data.path={path} is set, but data.corpus={corpus} is built in and reads no file",
            "add data.corpus=file to read sentences from data.path, or drop data.path",
        )
    found = _BUILTIN[corpus]()
    if not found:
        why = "runs with -OO (docstrings stripped)" if corpus == "docstrings" else "has no standard-library .py sources"
        raise PipelineError(
            f"data.corpus={corpus} is empty: this Python {why}", "use data.corpus=pydoc, or data.corpus=file data.path=..."
        )
    return found


def hash_tokenize(texts: list[str], seq_len: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Tokenize ``texts`` into ``input_ids``/``attention_mask`` (int64, (N, seq_len)) without a vocabulary.

    Lower-cased words and punctuation marks map to ``crc32(word)`` folded into the vocabulary; the
    sequence is ``[CLS] words... [SEP]`` padded with ``[PAD]`` (mask 0) or truncated to ``seq_len``.

    Args:
        texts: sentences.
        seq_len: tokens per sample (>= 3).
        vocab_size: ids stay in ``[0, vocab_size)`` (>= 8).
    """
    if seq_len < 3 or vocab_size < 8:
        raise PipelineError(
            f"text data needs seq_len >= 3 and vocab_size >= 8, got {seq_len} and {vocab_size}",
            "use a longer model.input_shape or a larger model.vocab_size, or data=random",
        )
    # Small vocabularies (toy models) keep the specials at 0/1/2 and words from 3 up.
    pad, cls, sep, first = (PAD, CLS, SEP, FIRST_WORD) if vocab_size > 2 * FIRST_WORD else (0, 1, 2, 3)
    ids = np.full((len(texts), seq_len), pad, dtype=np.int64)
    mask = np.zeros((len(texts), seq_len), dtype=np.int64)
    for i, text in enumerate(texts):
        words = _WORD.findall(text.lower())[: seq_len - 2]
        row = [cls, *(first + zlib.crc32(w.encode()) % (vocab_size - first) for w in words), sep]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}
