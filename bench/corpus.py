"""An offline English corpus: sentences from the docstrings of Python's standard library.

Every machine with CPython has them, they are real English prose written by many authors, and
nothing is downloaded. Sentences are split on end punctuation, kept when they read as prose
(40-220 characters, mostly letters, no code markers), de-duplicated, and shuffled with a fixed seed,
so the same list comes out on every machine with the same Python version.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re

MODULES = [
    "abc", "argparse", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq",
    "hmac", "html", "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json",
    "logging", "mailbox", "mimetypes", "multiprocessing", "netrc", "numbers", "operator", "optparse", "os", "pathlib",
    "pdb", "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "random", "re", "sched",
    "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "socketserver", "sqlite3",
    "ssl", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "trace", "traceback", "types", "typing", "unittest", "urllib.parse", "urllib.request", "uuid",
    "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo",
]

_CODE = re.compile(r"[{}\[\]<>=_`|\\#@$]|>>>|\(\)|\.py\b|::")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _docstrings():
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:
            continue
        yield inspect.getdoc(module) or ""
        for _, obj in sorted(vars(module).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "") == module.__name__:
                yield inspect.getdoc(obj) or ""
                if inspect.isclass(obj):
                    for _, member in sorted(vars(obj).items()):
                        if inspect.isfunction(member):
                            yield inspect.getdoc(member) or ""


def _prose(doc: str):
    for para in re.split(r"\n\s*\n", doc):
        text = " ".join(para.split())
        for sent in _SPLIT.split(text):
            sent = sent.strip()
            letters = sum(c.isalpha() or c == " " for c in sent)
            if not 40 <= len(sent) <= 220 or _CODE.search(sent) or letters < 0.9 * len(sent):
                continue
            if sent[0].isupper() and sent[-1] in ".!?":
                yield sent


def _collect(docs, seed: int, exclude=()) -> list[str]:
    """De-duplicated (case-insensitive) prose sentences of ``docs``, none in ``exclude``, shuffled with ``seed``."""
    seen, out = {s.lower() for s in exclude}, []
    for doc in docs:
        for sent in _prose(doc):
            if sent.lower() not in seen:
                seen.add(sent.lower())
                out.append(sent)
    out.sort()
    random.Random(seed).shuffle(out)
    return out


def sentences(seed: int = 0) -> list[str]:
    """De-duplicated prose sentences of the standard library's docstrings, shuffled with ``seed``."""
    return _collect(_docstrings(), seed)


def _source_docstrings(packages):
    """Docstrings read with ``ast`` from installed packages' source files (nothing is imported)."""
    import ast
    import pathlib
    import sysconfig

    # Folders are found on disk, not with importlib.util.find_spec: asking setuptools' distutils shim
    # for "pip" switches the shim off, and torch.utils.cpp_extension then fails to import setuptools.
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    for name in packages:
        if not (site / name).is_dir():
            continue
        for root in [site / name]:
            for path in sorted(pathlib.Path(root).rglob("*.py")):
                if "test" in path.parts[-2:] or path.name.startswith("test"):
                    continue
                try:
                    tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
                except (SyntaxError, ValueError):
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                        yield ast.get_docstring(node) or ""


TRAIN_PACKAGES = ["numpy", "scipy", "sklearn", "torch", "transformers", "matplotlib", "pandas", "setuptools", "pip",
                  "hypothesis", "onnx", "tensorboard", "mlxtend", "yaml", "psutil", "tqdm"]


def training_sentences(exclude=(), seed: int = 0, packages=TRAIN_PACKAGES) -> list[str]:
    """Prose sentences from the docstrings of installed packages (not the standard library), for training.

    Sentences in ``exclude`` (case-insensitive) are left out, so a held-out set from :func:`sentences`
    stays unseen.
    """
    return _collect(_source_docstrings(packages), seed, exclude)


if __name__ == "__main__":
    s = sentences()
    print(len(s))
    for line in s[:10]:
        print("-", line)
