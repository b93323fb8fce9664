"""The converted-weights cache: a GGUF file is de-quantised once, then kept as safetensors.

Owns: where the cache lives (``$BUDGETLLM_CACHE``, else ``$XDG_CACHE_HOME/budgetllm``, else
``~/.cache/budgetllm``), the key of an entry, writing an entry atomically and checking one.
Must not import: the engine, policy, accounting, server or LangChain (``load_model`` uses it).

Key: the full sha256 of the source file, the budgetllm version and the transformers version (its
GGUF de-quantisation produces the weights). Hashing a 100 MB GGUF takes a fraction of a second;
the digest is memoised in ``hashes.json`` under (path, size, mtime), so later loads hash nothing.
An entry holds what ``save_pretrained`` writes (config, float32 ``model.safetensors``, tokenizer)
plus ``manifest.json``, written last; the entry is built in a temporary directory and renamed into
place, so a crash leaves no half-written entry under its final name. An entry whose manifest is
missing, from another version, or whose files do not have the recorded sizes or whose
safetensors header does not parse is removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_ENV = "BUDGETLLM_CACHE"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def cache_root() -> Path:
    """The user cache directory of budgetllm (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "budgetllm"


def weights_root() -> Path:
    return cache_root() / "weights"


def _versions() -> dict[str, str]:
    import transformers

    from budgetllm import __version__

    return {"budgetllm": str(__version__), "transformers": str(transformers.__version__)}


def file_sha256(path: Path) -> str:
    """The sha256 of a file, memoised by (resolved path, size, mtime) in ``hashes.json``."""
    path = Path(path).resolve()
    st = path.stat()
    memo_file = cache_root() / "hashes.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    hit = memo.get(str(path))
    if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return str(hit["sha256"])
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    memo[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()}
    try:
        _write_atomic(memo_file, json.dumps(memo, indent=1))
    except OSError:
        pass  # a read-only cache still works, it only hashes again next time
    return digest.hexdigest()


def entry_dir(source: Path) -> Path:
    """Where the converted weights of ``source`` live (existing or not)."""
    v = _versions()
    stem = Path(source).stem.replace(" ", "_")
    return weights_root() / f"{stem}-{file_sha256(source)[:16]}-bl{v['budgetllm']}-tf{v['transformers']}"


def check_entry(directory: Path) -> str | None:
    """None when the entry is complete and matches this installation, else what is wrong."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return "no readable manifest"
    if {k: manifest.get(k) for k in ("budgetllm", "transformers")} != _versions():
        return "built by another budgetllm or transformers version"
    for name, size in manifest.get("files", {}).items():
        f = directory / name
        if not f.is_file() or f.stat().st_size != size:
            return f"{name} is missing or truncated"
    try:
        from safetensors import safe_open

        with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
            if len(list(f.keys())) != manifest.get("tensors"):
                return "model.safetensors holds the wrong tensors"
    except Exception as e:  # noqa: BLE001 - any parse failure means: rebuild
        return f"model.safetensors does not parse ({type(e).__name__})"
    return None


def write_entry(directory: Path, source: Path, hf_model: Any, tokenizer: Any) -> Path:
    """Save a converted model as a cache entry: into a temporary directory, then one rename."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(directory.parent)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        _save_model(hf_model, tmp)
        tokenizer.save_pretrained(str(tmp))
        from safetensors import safe_open

        with safe_open(str(tmp / "model.safetensors"), framework="pt") as f:
            n_tensors = len(list(f.keys()))
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        manifest = {**_versions(), "source": str(Path(source).resolve()), "sha256": file_sha256(source),
                    "tensors": n_tensors, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if directory.exists():  # a broken entry (checked by the caller) or one another process just built
            shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and check_entry(directory) is None:  # another process won the race
            return directory
        raise
    return directory


def _remove_stale_builds(root: Path, older_than_s: float = 3600.0) -> None:
    """Temporary directories of builds that were killed (a live build renames its own within minutes)."""
    import time

    for d in root.glob(".building-*"):
        try:
            if time.time() - d.stat().st_mtime > older_than_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def converted(gguf: Path, *, progress: bool = True, quiet_gguf=None) -> Path | None:
    """The cache entry of a GGUF file, built on first use; None when the cache cannot be written
    (the caller then loads the GGUF directly, as before)."""
    import sys

    directory = entry_dir(gguf)
    problem = check_entry(directory) if directory.exists() else "absent"
    if problem is None:
        return directory
    if progress:
        why = "first load" if problem == "absent" else f"the cached copy is unusable: {problem}"
        print(f"budgetllm: building the converted-weights cache for {Path(gguf).name} ({why}; later loads take "
              f"seconds) in {directory.parent}", file=sys.stderr)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _spinner(progress, f"de-quantising {Path(gguf).name} into the weights cache"):
        tokenizer = AutoTokenizer.from_pretrained(str(Path(gguf).parent), gguf_file=Path(gguf).name)
        with quiet_gguf() if quiet_gguf else _null():
            model = AutoModelForCausalLM.from_pretrained(str(Path(gguf).parent), gguf_file=Path(gguf).name,
                                                         dtype=torch.float32)
        try:
            return write_entry(directory, gguf, model, tokenizer)
        except Exception as e:  # noqa: BLE001 - a cache that cannot be written only costs the speed-up
            print(f"budgetllm: cannot write the weights cache ({type(e).__name__}: {e}); loading "
                  f"{Path(gguf).name} directly", file=sys.stderr)
            return None


def _null():
    import contextlib

    return contextlib.nullcontext()


def _spinner(enabled: bool, text: str):
    if not enabled:
        return _null()
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True)
    bar.add_task(text, total=None)
    return bar


def _save_model(hf_model: Any, directory: Path) -> None:
    """What ``save_pretrained`` would write; it refuses a model loaded from GGUF (transformers marks
    it as quantised although its weights are already plain float tensors)."""
    from safetensors.torch import save_model

    save_model(hf_model, str(directory / "model.safetensors"))  # drops the duplicate of tied weights
    hf_model.config.save_pretrained(str(directory))
    cfg = json.loads((directory / "config.json").read_text())
    if cfg.pop("quantization_config", None) is not None:
        (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    if getattr(hf_model, "generation_config", None) is not None:
        hf_model.generation_config.save_pretrained(str(directory))


@dataclass
class EntryInfo:
    path: Path
    bytes: int
    problem: str | None
    source: str | None


def list_entries() -> list[EntryInfo]:
    root = weights_root()
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not d.is_dir():
            continue
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        try:
            source = json.loads((d / MANIFEST).read_text()).get("source")
        except (OSError, ValueError):
            source = None
        out.append(EntryInfo(d, size, "interrupted build" if d.name.startswith(".building-") else check_entry(d),
                             source))
    return out


def clear() -> int:
    """Remove every cache entry and the hash memo; returns the bytes freed."""
    freed = sum(e.bytes for e in list_entries())
    shutil.rmtree(weights_root(), ignore_errors=True)
    (cache_root() / "hashes.json").unlink(missing_ok=True)
    return freed


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
