"""docs/config.md is the generated configuration reference: regenerate it with
`python -m simplebev_core.config_doc > docs/config.md` whenever a key or its comment changes."""
from pathlib import Path

from simplebev_core.config import SimpleBevConfig, describe_keys, flatten_config
from simplebev_core.config_doc import reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_reference_is_current_and_every_key_is_documented():
    assert DOC.read_text() == reference(), "regenerate docs/config.md (see this test's docstring)"
    notes = describe_keys()
    undocumented = [k for k in flatten_config(SimpleBevConfig()) if not notes.get(k)]
    assert not undocumented, f"keys without a comment in config/simplebev.yaml: {undocumented}"
