"""Load and validate the pipeline configuration against ``config/schemas/config.schema.yaml``.

Errors name the config file, the key and the fix, e.g.
``config/config.yaml: data.sourse: unknown key ... Fix: remove it or spell one of ...``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from .errors import LdpmInputError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "config" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> tuple[str, str, str]:
    """(key, problem, fix) for one schema violation, in words a user can act on."""
    key = _key_path(error)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"{key}." if key != "<top level>" else ""
        return (f"{where}{extra[0]}", "unknown key",
                f"remove it, or use one of: {', '.join(allowed)}")
    if error.validator == "required":
        return (key, error.message, "add the missing key (see config/config.yaml for defaults)")
    if error.validator == "type":
        return (key, f"has the wrong type ({error.message})",
                f"give a value of type {error.validator_value}")
    if error.validator == "enum":
        return (key, f"value {error.instance!r} is not allowed",
                f"use one of {error.validator_value}")
    return (key, error.message, "correct the value (see config/schemas/config.schema.yaml)")


def validate_config(config: Mapping[str, Any], source: str | Path = "config") -> dict:
    """Validate ``config``; raise :class:`LdpmInputError` naming ``source`` and the key."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        key, problem, fix = _describe(errors[0])
        raise LdpmInputError(f"{source}: {key}", problem, fix)
    config = copy.deepcopy(dict(config))
    fr = config["data"]["split_fractions"]
    if abs(fr["train"] + fr["val"] + fr["test"] - 1.0) > 1e-6:
        raise LdpmInputError(f"{source}: data.split_fractions", "fractions do not sum to 1",
                             "make train + val + test equal 1")
    if config["data"]["source"] == "fastmri" and not config["data"].get("fastmri_root"):
        raise LdpmInputError(f"{source}: data.fastmri_root", "is empty but data.source is fastmri",
                             "set it to the folder holding the fastMRI multicoil *.h5 files")
    pre = config.get("pretrained") or {}
    if (config["train"]["preset"] == "paper" and not pre.get("vgg16_path")
            and not pre.get("vae_without_vgg")):
        raise LdpmInputError(f"{source}: pretrained.vgg16_path",
                             "is empty under train.preset paper, so eq. 5's VGG term would be dropped",
                             "set it to a local torchvision vgg16 state dict (vgg16-397923af.pth), "
                             "or set pretrained.vae_without_vgg: true to train without it")
    for method, what in (("unet_official", "U-Net"), ("varnet_official", "E2E-VarNet")):
        weights = (config.get("inference", {}).get(method) or {}).get("checkpoint")
        if method in config["methods"] and not weights:
            raise LdpmInputError(f"{source}: inference.{method}.checkpoint",
                                 f"is empty but methods lists {method}",
                                 f"set it to fastMRI's {what} weights (e.g. "
                                 f"brain_leaderboard_state_dict.pt), or drop {method} from methods")
    return config


def training_masks(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The masks every training stage draws (``masks.acceleration``, ``masks.center_fraction``
    of ``config``; without one, of ``config/config.yaml``), so that training and test masks
    share one source and one geometry."""
    if config is None:
        with open(DEFAULT_CONFIG) as f:
            config = yaml.safe_load(f)
    m = config["masks"]
    return {"acceleration": int(m["acceleration"]), "center_fraction": float(m["center_fraction"])}


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: Mapping[str, Any] | None = None) -> dict:
    """Read a YAML config (optionally deep-merged with ``overrides``) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise LdpmInputError(path, "config file not found", "pass an existing YAML file")
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise LdpmInputError(path, f"is not valid YAML ({e})", "fix the YAML syntax") from e
    if overrides:
        config = deep_merge(config, overrides)
    return validate_config(config, path)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict:
    """A copy of ``base`` with ``override`` merged in, recursively for nested mappings."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
