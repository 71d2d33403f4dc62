"""Constitution loading, hashing and executable checks."""

from __future__ import annotations

import pytest

from constitution.loader import ConstitutionError, load_constitution
from judges.checks import check_votes
from judges.verdict import PairText


def test_bundled_constitution_is_valid_and_hashed():
    c = load_constitution("bundled:support")
    assert 5 <= len(c.principles) <= 8
    assert any(p.check for p in c.principles) and any(p.check is None for p in c.principles)
    assert len(c.content_hash) == 16 and c.content_hash == load_constitution("bundled:support").content_hash


def test_hash_ignores_formatting_but_not_content(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("name: x\nprinciples:\n  - {id: p1, text: Be kind., weight: 1}\n")
    b = tmp_path / "b.yaml"
    b.write_text("# a comment\nname: x\nprinciples:\n- id: p1\n  text: Be kind.\n  weight: 1.0\n")
    c = tmp_path / "c.yaml"
    c.write_text("name: x\nprinciples:\n  - {id: p1, text: Be kind., weight: 2}\n")
    assert load_constitution(a).content_hash == load_constitution(b).content_hash
    assert load_constitution(a).content_hash != load_constitution(c).content_hash


@pytest.mark.parametrize("body, field", [
    ("name: x\nprinciples:\n  - {id: p1, text: a}\n  - {id: p1, text: b}\n", "duplicate principle id 'p1'"),
    ("name: x\nprinciples:\n  - {id: p1}\n", "principles[p1].text"),
    ("name: x\nprinciples:\n  - {id: p1, text: a, weight: -1}\n", "principles[p1].weight"),
    ("name: x\nprinciples:\n  - {id: p1, text: a, check: {forbidden_patterns: ['(']}}\n", "invalid regex"),
    ("name: x\nprinciples:\n  - {id: p1, text: a, check: {max_wordz: 3}}\n", "principles[p1].check.max_wordz"),
    ("name: x\nprinciples: []\n", "principles"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_errors_name_the_file_and_field(tmp_path, body, field):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    assert str(path) in str(info.value) and field in str(info.value)


def test_checks_vote_deterministically():
    c = load_constitution("bundled:support")
    good = "Sorry about that. I have refunded order #LS-1 and you will see it in 3 days."
    bad = "Please send us your password so we can check. Regards, [Your Name] and we will"
    votes = check_votes(PairText(prompt="q", text_a=good, text_b=bad), c)
    assert votes["no_placeholders"].vote == "a" and votes["no_credential_requests"].vote == "a"
    assert votes["complete"].vote == "a"
    assert votes["concise"].vote == "tie"  # both under the word limit
    swapped = check_votes(PairText(prompt="q", text_a=bad, text_b=good), c)
    assert swapped["no_placeholders"].vote == "b"
