"""docs/config.md and the comments (and defaults) of config/simplebev.yaml are generated from
the key definitions in simplebev_core/config.py: regenerate them with
`python -m simplebev_core.config_doc > docs/config.md` and
`python -m simplebev_core.config_doc --yaml > config/simplebev.yaml` whenever a key, its default,
its rule or its documentation changes."""
from pathlib import Path

import yaml

from simplebev_core.config import (NODE_NAME, SimpleBevConfig, config_from_dict, describe_keys,
                                   flatten_config, key_docs, key_rule)
from simplebev_core.config_doc import main, params_file, reference

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "config.md"
YAML = REPO / "config" / "simplebev.yaml"


def test_reference_is_current_and_every_key_is_documented():
    assert DOC.read_text() == reference(), "regenerate docs/config.md (see this test's docstring)"
    notes = describe_keys()
    undocumented = [k for k in flatten_config(SimpleBevConfig()) if not notes.get(k)]
    assert not undocumented, f"keys without a comment in config/simplebev.yaml: {undocumented}"


def test_shipped_yaml_is_generated_from_the_key_definitions():
    assert YAML.read_text() == params_file(), (
        "regenerate config/simplebev.yaml (see this test's docstring)")
    # Its comments read back as the key docs (the ROS descriptions), its values as the defaults.
    assert describe_keys(YAML) == key_docs()
    raw = yaml.safe_load(YAML.read_text())[NODE_NAME]["ros__parameters"]
    assert config_from_dict(raw) == SimpleBevConfig()


def test_a_drifted_comment_is_caught(tmp_path):
    drifted = tmp_path / "simplebev.yaml"
    text = YAML.read_text()
    comment = "(odd, >= 1)"
    assert comment in text
    drifted.write_text(text.replace(comment, "(any size)"))
    assert describe_keys(drifted) != key_docs()


def test_documentation_states_each_rule_once_from_the_spec():
    table = reference()
    for key, note in key_docs().items():
        assert note.replace("|", "\\|") in table, key
        rule = key_rule(key)
        if rule:
            assert f"| {rule.replace('|', chr(92) + '|')} |" in table, key


def test_generator_cli(capsys):
    assert main([]) == 0 and capsys.readouterr().out == reference()
    assert main(["--yaml"]) == 0 and capsys.readouterr().out == params_file()
