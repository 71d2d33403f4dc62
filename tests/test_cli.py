"""The `rlaif` command: clear errors with exit code 2 and nothing written; init; status; the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.config import load_config
from flows.round import RoundSummary
from store.db import Store

RLAIF = str(Path(sys.executable).parent / "rlaif")
runner = CliRunner()


def run_rlaif(*args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run([RLAIF, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def test_missing_config_exits_2_and_writes_nothing(tmp_path):
    result = run_rlaif("round", "--config", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "not found" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("body, expected", [
    ("sampler:\n  temprature: 0.7\n", "sampler.temprature: Extra inputs are not permitted"),
    ("sampler:\n  temperature: -1\n", "sampler.temperature: Input should be greater than or equal to 0"),
    ("training:\n  beta: fast\n", "training.beta"),
    ("- just\n- a list\n", "expected a mapping"),
    ("sampler: [unclosed\n", "not valid YAML"),
    ("policy:\n  path: no/such/model\n", "policy.path"),
    ("prompts:\n  source: missing.jsonl\n", "missing.jsonl: prompt file not found"),
    ("sampler:\n  n: 1\n", "sampler.n: Input should be greater than or equal to 2"),
    ("sampler:\n  backend: vllm\ntraining:\n  lora_r: 32\n", "training.lora_r 32 is above sampler.vllm.max_lora_rank 16"),
    ("sampler:\n  vllm:\n    server_url: http://127.0.0.1:8000\n", "sampler.vllm: Value error, sampler.vllm.server_url is set but served_model"),
])
def test_config_errors_name_the_file_and_field(tmp_path, body, expected):
    config = tmp_path / "rlaif.yaml"
    config.write_text(body)
    result = runner.invoke(app, ["round", "--config", str(config), "--db", str(tmp_path / "r.duckdb")])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()), result.output
    assert not (tmp_path / "r.duckdb").exists()


def test_bare_off_in_yaml_means_off(tmp_path):
    """YAML 1.1 reads `off` as false; the config must still mean the string the README documents."""
    (tmp_path / "rlaif.yaml").write_text("training:\n  confounds: off\n")
    assert load_config(tmp_path / "rlaif.yaml").training.confounds == "off"


def test_constitution_error_names_the_constitution_file(tmp_path):
    (tmp_path / "constitution.yaml").write_text("name: x\nprinciples:\n  - {id: a, text: t}\n  - {id: a, text: u}\n")
    (tmp_path / "rlaif.yaml").write_text("constitution: constitution.yaml\n")
    result = runner.invoke(app, ["round", "--config", str(tmp_path / "rlaif.yaml"), "--db", str(tmp_path / "r.duckdb")])
    assert result.exit_code == 2
    assert "constitution.yaml" in result.output and "duplicate principle id 'a'" in result.output
    assert not (tmp_path / "r.duckdb").exists()


def test_init_writes_a_config_that_loads_and_refuses_to_overwrite(tmp_path):
    result = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "proj" / "rlaif.yaml")
    assert config.constitution == str((tmp_path / "proj" / "constitution.yaml").resolve())
    assert config.training.beta == 0.1 and config.routing.high_stakes_tags == ["safety", "privacy"]
    again = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert again.exit_code == 2 and "already exists" in again.output


def test_init_domain_scaffolds_a_domain_whose_policy_is_told_what_it_is(tmp_path):
    from constitution.loader import load_constitution
    from flows.config import checked_config
    from flows.round import domain_mismatch, prompt_shortfalls
    from prompts.loader import load_prompts

    result = runner.invoke(app, ["init", str(tmp_path / "cooking"), "--domain", "cooking"])
    assert result.exit_code == 0, result.output
    config = checked_config(load_config(tmp_path / "cooking" / "rlaif.yaml"))
    constitution = load_constitution(config.constitution)
    prompts = load_prompts(config.prompts.source)
    assert constitution.name == "cooking" and "cooking" in constitution.system_prompt
    assert config.system_prompt() == constitution.system_prompt == config.policy.system_prompt  # settled by checked_config
    assert any(p.check for p in constitution.principles) and any(len(p.violations) >= 4 for p in constitution.principles)
    assert {p.split for p in prompts} == {"train", "heldout"} and config.review.gold == []
    assert domain_mismatch(config, constitution) == []
    assert any("has 3 held-out prompts" in note for note in prompt_shortfalls(config, prompts))  # the starter asks for 24
    # the bundled support agent's system message with this constitution: the round says so at its start
    support = load_constitution("bundled:support").system_prompt
    told_wrong = config.model_copy(update={"policy": config.policy.model_copy(update={"system_prompt": support})})
    assert "the bundled support task's" in domain_mismatch(told_wrong, constitution)[0]


def test_status_without_a_database_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["status", "--db", str(tmp_path / "none.duckdb")])
    assert result.exit_code == 2 and "no such database" in result.output


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stdout + done.stderr
    return lines[0]


def test_every_bad_store_path_exits_2_with_one_line_and_no_traceback(tmp_path):
    """--db a directory, a missing database, a file another process holds: one line, exit 2, for the
    commands that read and for a round (which checks before Prefect starts)."""
    (tmp_path / "a-folder").mkdir()
    config = tmp_path / "rlaif.yaml"
    config.write_text("prompts: {train_per_round: 2, heldout: 1}\n")
    for args in (["status", "--db", str(tmp_path / "a-folder")], ["round", "--config", str(config), "--db", str(tmp_path / "a-folder")]):
        done = run_rlaif(*args, cwd=tmp_path)
        assert done.returncode == 2 and "a-folder is a directory, not a DuckDB file" in one_error_line(done)
    done = run_rlaif("report", "1", "--db", str(tmp_path / "missing.duckdb"), cwd=tmp_path)
    assert done.returncode == 2 and "no such database" in one_error_line(done)
    held = tmp_path / "held.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from store.db import Store; s = Store(sys.argv[1]); "
                               "s.note('testing'); print('ready', flush=True); time.sleep(60)", str(held)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for args in (["status", "--db", str(held)], ["round", "--config", str(config), "--db", str(held)]):
            done = run_rlaif(*args, cwd=tmp_path)
            assert done.returncode == 2 and f"is in use by PID {holder.pid}" in one_error_line(done) and "testing" in done.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_demo_runs_a_real_round_and_status_reports_it(tmp_path):
    """`rlaif demo` end to end on the real SmolLM2: the README's demo, as a user runs it (no Prefect
    server: the flow starts a temporary one), but with one answer per held-out prompt and model
    instead of three (saves ~90 s of CI; repeated samples are tested in test_decision and the rounds)."""
    result = run_rlaif("demo", "--set", "eval.samples_per_prompt=1", cwd=tmp_path, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for label in ("pairs judged", "position consistency", "spot-checks queued", "DPO loss first / last",
                  "candidate win rate", "promoted?"):
        assert label in result.stdout
    db = tmp_path / "rlaif.duckdb"
    with Store(db, read_only=True) as store:
        counts = store.count_rows()
        (rnd,) = store.rounds()
    assert rnd.status == "finished"
    # + the probe prompts and the gold set's prompts
    assert counts["prompts"] == 220 + 8 + 130 and counts["completions"] >= 32 and counts["pairs"] >= 16
    assert counts["judgments"] >= 32 and counts["verdicts"] >= 16 and counts["review_queue"] >= 1
    # the whole loop with every trust gate on: the judge is measured against the gold set's readers
    # (their 1,300 labels decide every judged principle, so no synthetic qualification is run), a
    # candidate is trained, evaluated, and promotion is decided
    assert counts["reviews"] == 1300 and counts["judge_qualifications"] == 0
    summary = RoundSummary.model_validate(rnd.summary_json)
    assert summary.train.trained, summary.train.reason
    assert counts["train_metrics"] >= 1 and counts["models"] == 2 and counts["evals"] >= 1
    assert abs(summary.train.first_loss - 0.693147) < 1e-4
    for label in ("judge qualification", "length-controlled win rate"):
        assert label in result.stdout
    status = run_rlaif("status", cwd=tmp_path)
    assert status.returncode == 0 and "round-0001" not in status.stderr
    assert "finished" in status.stdout and "review_queue" in status.stdout


def test_a_relative_vllm_python_is_made_absolute_but_stays_the_venv_link(tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    link = tmp_path / "venv" / "bin" / "python"
    link.symlink_to(sys.executable)  # following it would leave the venv, and its packages, behind
    (tmp_path / "rlaif.yaml").write_text("sampler:\n  vllm:\n    python: venv/bin/python\n")
    assert load_config(tmp_path / "rlaif.yaml").sampler.vllm.python == str(link)


def test_an_empty_prompt_file_is_named_and_nothing_is_written(tmp_path):
    (tmp_path / "prompts.jsonl").write_text("\n")
    (tmp_path / "rlaif.yaml").write_text("prompts:\n  source: prompts.jsonl\n")
    result = runner.invoke(app, ["round", "--config", str(tmp_path / "rlaif.yaml"), "--db", str(tmp_path / "r.duckdb")])
    assert result.exit_code == 2 and "prompts.jsonl: no prompts" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "r.duckdb").exists()


def test_the_configuration_page_is_generated_from_the_code_and_current():
    from flows.config_docs import PAGE, render

    assert PAGE.read_text() == render(), "docs/configuration.md is out of date: run python -m flows.config_docs"
    assert "| `samples_per_prompt` | `4` |" in render() and "## `sampler.vllm`" in render()
