"""Every benchmark starts as the docs run it (`.venv/bin/python benchmarks/NAME.py`): run as a file,
its folder comes first on sys.path, so no benchmark may be named like a package of the project (it
would shadow it). `--help` gets past every import without measuring anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "all.py")  # all.py runs the others


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_imports_run_as_a_file(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          timeout=300, cwd=BENCHMARKS.parent)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]


def test_no_benchmark_shadows_a_package():
    packages = {p.name for p in BENCHMARKS.parent.iterdir() if (p / "__init__.py").is_file()}
    assert packages and not {Path(s).stem for s in SCRIPTS} & packages


@pytest.fixture(autouse=True)
def benchmarks_importable():
    """Benchmarks import as they run, with their folder first on sys.path; for this module's tests only."""
    sys.path.insert(0, str(BENCHMARKS))
    yield
    sys.path.remove(str(BENCHMARKS))


def test_the_results_page_is_generated_from_the_results_files_and_current():
    from results_page import PAGE, render
    assert PAGE.read_text() == render(), "docs/results.md is out of date: run .venv/bin/python benchmarks/results_page.py"


def test_the_agreement_benchmark_finds_a_qwen_judge_where_rlaif_judge_get_leaves_it(tmp_path, monkeypatch):
    """The Qwen judges are measured only when found on this machine: the benchmark must look where
    `rlaif judge get` converts them (a config.json stands in for the converted checkpoint)."""
    from lm.judge_models import fetch_judge_model

    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path))
    from judge_agreement import judges_on_hand
    assert "qwen0.5b-pointwise_fewshot" not in judges_on_hand()
    earlier = tmp_path / "judges" / "qwen2.5-coder-0.5b" / "checkpoint"  # where an earlier version converted it
    earlier.mkdir(parents=True)
    (earlier / "config.json").write_text("{}")
    checkpoint = fetch_judge_model("qwen2.5-coder-0.5b")  # found, so nothing is fetched: only renamed
    assert checkpoint.name == "qwen2.5-coder-0.5b" and (checkpoint / "config.json").is_file()
    assert judges_on_hand()["qwen0.5b-pointwise_fewshot"]["model_path"] == str(checkpoint)


def test_judge_agreement_runs_on_a_slice_of_the_gold_set(tmp_path, round_config):
    """The gold-set benchmark end to end on 3 teaching and 3 measuring pairs, with the tiny model as
    the judge: every number it reports comes from the slice (the full run, on SmolLM2, is a benchmark)."""
    import json

    import yaml

    data = round_config.model_dump(mode="json", exclude_none=True)
    data["constitution"] = "bundled:support"  # the gold set's principles
    data["judge"] |= {"qualification_prompts": 2, "qualification_max_new_tokens": 8}
    config = tmp_path / "agreement.yaml"
    config.write_text(yaml.safe_dump(data))
    record = tmp_path / "judge-agreement.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "judge_agreement.py"), "--config", str(config), "--judge",
                           "smollm2-pointwise_fewshot", "--limit", "3", "--out", str(tmp_path / "out"), "--record", str(record)],
                          capture_output=True, text=True, timeout=900, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("RESULT judge_gold_kappa ")
    found = json.loads(record.read_text())
    assert found["teaching_pairs"] == 3 and found["measuring_pairs"] == 3
    entry = found["judges"]["smollm2-pointwise_fewshot"]
    assert entry["judge_id"].startswith("local_logprob:") and entry["tie_margin"] in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)
    for measured in (entry, entry["taught"]):
        assert 0 <= measured["overall"]["n"] <= 3
        assert set(measured["principles"]) == {"resolves_request", "honest", "protects_customers", "courteous"}
        assert all(p["n"] <= 3 for p in measured["principles"].values())
    readers = found["between_readers"]
    assert readers["readers"] == ["gold-reader-1", "gold-reader-2"] and readers["overall"]["n"] == 3
    # a judge measured later joins the record; the one measured before stays as it was, and a note
    # written of the whole earlier run (how it was timed) stays with its judges
    record.write_text(json.dumps(found | {"timing_note": "measured beside another job"}))
    again = subprocess.run([sys.executable, str(BENCHMARKS / "judge_agreement.py"), "--config", str(config), "--judge",
                            "smollm2-pointwise", "--limit", "3", "--out", str(tmp_path / "out"), "--record", str(record)],
                           capture_output=True, text=True, timeout=900, cwd=BENCHMARKS.parent)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    both = json.loads(record.read_text())["judges"]
    assert both["smollm2-pointwise_fewshot"] == entry | {"timing_note": "measured beside another job"}
    assert "timing_note" not in both["smollm2-pointwise"] and "--judge smollm2-pointwise " in both["smollm2-pointwise"]["command"]
