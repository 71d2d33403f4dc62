"""The stronger judges' GGUF files are untrusted data: only the pinned bytes and header are accepted."""

from __future__ import annotations

import hashlib

import gguf
import numpy as np
import pytest

from lm.judge_models import JUDGE_MODELS, GGUFJudgeModel, JudgeModelError, fetch_judge_model, verify_gguf


def write_gguf(path, name: str, architecture: str = "qwen2", file_type: int = 15) -> None:
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_tensor("t", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def pinned(path, **overrides) -> GGUFJudgeModel:
    data = path.read_bytes()
    spec = dict(name="tiny", wheel="x-part", version="1", parts=1, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                architecture="qwen2", file_type=15, general_name="Tiny Judge")
    return GGUFJudgeModel(**{**spec, **overrides})


def test_the_pinned_file_is_accepted_and_any_other_is_refused(tmp_path):
    path = tmp_path / "judge.gguf"
    write_gguf(path, "Tiny Judge")
    verify_gguf(pinned(path), path)  # the pinned bytes and header
    with pytest.raises(JudgeModelError, match="sha256"):
        verify_gguf(pinned(path, sha256="0" * 64), path)
    with pytest.raises(JudgeModelError, match="bytes"):
        verify_gguf(pinned(path, size=123), path)
    with pytest.raises(JudgeModelError, match="general.architecture"):
        verify_gguf(pinned(path, architecture="llama"), path)
    other = tmp_path / "other.gguf"
    write_gguf(other, "Tiny Judge", file_type=7)  # pinned by its own hash, but the wrong quantisation
    with pytest.raises(JudgeModelError, match="general.file_type"):
        verify_gguf(pinned(other), other)


def test_an_unknown_judge_model_is_a_clear_error():
    with pytest.raises(JudgeModelError, match="known: qwen2.5-coder-0.5b, qwen2.5-coder-1.5b"):
        fetch_judge_model("gpt-5")
    assert {m.parts for m in JUDGE_MODELS.values()} == {6, 22}
