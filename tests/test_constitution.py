"""Constitution loading, hashing and executable checks."""

from __future__ import annotations

import pytest

from constitution.loader import ConstitutionError, load_constitution
from judges.checks import check_votes
from judges.verdict import PairText


def test_bundled_constitution_is_valid_and_hashed():
    c = load_constitution("bundled:support")
    assert 5 <= len(c.principles) <= 12
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


@pytest.mark.parametrize("reply, passes", [
    ("Your order 4471 of 2 mugs is on its way.", True),            # both figures are the customer's
    ("I refunded $412.37 to your card today.", False),             # an invented amount
    ("It will arrive on 03/14 at 9:14.", False),                   # an invented date and time
    ("I will look into your order right away.", True),             # no figures at all
])
def test_figures_from_message_catches_invented_specifics(reply, passes):
    from constitution.loader import Check

    check = Check(figures_from_message=True)
    message = "Order #4,471 had 2 mugs and one arrived broken. Can you help?"
    assert (check.failures(reply, message) == []) is passes, check.failures(reply, message)


@pytest.mark.parametrize("reply, passes", [
    ("Sorry about the broken mug; I will send a replacement mug for order 4471.", True),
    ("Thank you for reaching out. We value you and are always happy to help.", False),  # generic filler
])
def test_message_terms_checks_the_reply_names_what_was_asked(reply, passes):
    from constitution.loader import Check

    check = Check(message_terms=2)
    message = "One mug in my order arrived broken. Can I get a replacement?"
    assert (check.failures(reply, message) == []) is passes, check.failures(reply, message)


def test_content_checks_work_for_a_second_domain_from_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "name: kitchen\nprinciples:\n  - id: grounded\n    text: No made-up quantities.\n"
        "    check: {figures_from_message: true}\n  - id: on_topic\n    text: Talks about the dish.\n"
        "    check: {message_terms: 1}\n")
    c = load_constitution(tmp_path / "c.yaml")
    message = "How long do I bake 2 loaves of sourdough?"
    good = "Bake the 2 sourdough loaves until they sound hollow."
    grounded, on_topic = (p.check for p in c.principles)
    assert grounded.failures(good, message) == [] and grounded.failures("Bake at 230 degrees for 45 minutes.", message)
    assert on_topic.failures(good, message) == [] and on_topic.failures("Happy to help anytime, friend!", message)
