"""Config validation: every bad key or type stops with one message naming the key and fix."""

import pytest
import yaml

from ldpm.config import DEFAULT_CONFIG, deep_merge, load_config, validate_config
from ldpm.errors import LdpmInputError


@pytest.fixture
def default():
    with open(DEFAULT_CONFIG) as f:
        return yaml.safe_load(f)


def test_default_config_is_valid():
    cfg = load_config()
    assert cfg["data"]["source"] == "embedded"


def test_paper_preset_is_valid(default):
    import ldpm.config as c
    load_config(c.REPO_ROOT / "config" / "presets" / "paper.yaml",
                {"pretrained": {"vgg16_path": "/weights/vgg16-397923af.pth"}})


@pytest.mark.parametrize("override,key,fix", [
    ({"data": {"sourse": "embedded"}}, "data.sourse", "use one of"),
    ({"unknown_block": 1}, "unknown_block", "remove it"),
    ({"masks": {"acceleration": "eight"}}, "masks.acceleration", "integer"),
    ({"data": {"source": "dicom"}}, "data.source", "use one of"),
    ({"data": {"split_fractions": {"train": 0.5, "val": 0.2, "test": 0.2}}}, "split_fractions", "equal 1"),
    ({"data": {"source": "fastmri", "fastmri_root": None}}, "fastmri_root", "folder"),
])
def test_bad_config_names_key_and_fix(default, override, key, fix):
    with pytest.raises(LdpmInputError) as e:
        validate_config(deep_merge(default, override), "my.yaml")
    msg = str(e.value)
    assert "my.yaml" in msg and key in msg and fix in msg


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(LdpmInputError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(LdpmInputError, match="bad.yaml.*not valid YAML"):
        load_config(bad)
