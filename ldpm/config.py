"""Load and validate the pipeline configuration against ``config/schemas/config.schema.yaml``.

Errors name the config file, the key and the fix, e.g.
``config/config.yaml: data.sourse: unknown key. Fix: remove it, or use one of: ...``.

:func:`validate_config` runs, in order: coercion of strings that Snakemake's ``--config``
leaves in nested blocks (``masks={acceleration: 4}`` arrives as ``'4'``) to the number, boolean
or null the schema wants there; the schema (keys, types, ranges, each stage's
``train.stages`` overrides); rules between keys; and the paths the config names (they must
exist and be of the right kind, relative to the working directory), so that a bad config
stops before the DAG is built rather than in a job hours later.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import jsonschema
import yaml

from .errors import LdpmInputError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "config" / "schemas" / "config.schema.yaml"
CONFIG_FILE = REPO_ROOT / "config" / "config.yaml"

#: HDF5's format signature; the superblock sits at byte 0 or, after a user block, at 512,
#: 1024, 2048, ... (the HDF5 file format specification, "Format Signature").
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@lru_cache(maxsize=1)
def _schema_cached(mtime: float) -> dict:
    with open(SCHEMA_PATH) as f:
        return with_baselines(yaml.safe_load(f))


def with_baselines(schema: dict) -> dict:
    """``schema`` with each trained baseline's parts from its module (:mod:`ldpm.baselines`):
    its ``train.stages`` entry (``$defs/stage_<name>``: the keys of ``$defs/stage_baseline`` and
    its own), its name among ``methods`` (after ``zero_filled``) and its ``inference`` block if
    it takes one."""
    from .baselines import baselines

    props = schema["properties"]
    defs = schema["$defs"]
    stages = props["train"]["properties"]["stages"]["properties"]
    methods = props["methods"]["items"]["enum"]
    for i, (name, declared) in enumerate(baselines().items()):
        defs[f"stage_{name}"] = {"type": "object", "additionalProperties": False, "properties": {
            **defs["stage_baseline"]["properties"], **copy.deepcopy(dict(declared.schema))}}
        stages[name] = {"$ref": f"#/$defs/stage_{name}"}
        methods.insert(1 + i, name)
        if declared.inference_schema is not None:
            props["inference"]["properties"][name] = copy.deepcopy(dict(declared.inference_schema))
    return schema


def load_schema() -> dict:
    """The config schema with the trained baselines' parts (:func:`with_baselines`; a fresh
    copy, so callers may modify it)."""
    return copy.deepcopy(_schema_cached(SCHEMA_PATH.stat().st_mtime))


# ------------------------------------------------------------------------------------------
# Error messages


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _types(schema: Mapping[str, Any]) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _range(schema: Mapping[str, Any]) -> str:
    """The schema's numeric range in words: ``>= 1``, ``in (0, 1)``, ``> 0 and <= 1``."""
    lo = (f"> {schema['exclusiveMinimum']}" if "exclusiveMinimum" in schema
          else f">= {schema['minimum']}" if "minimum" in schema else "")
    hi = (f"< {schema['exclusiveMaximum']}" if "exclusiveMaximum" in schema
          else f"<= {schema['maximum']}" if "maximum" in schema else "")
    if "exclusiveMinimum" in schema and "exclusiveMaximum" in schema:
        return f"in ({schema['exclusiveMinimum']}, {schema['exclusiveMaximum']})"
    if "minimum" in schema and "maximum" in schema:
        return f"in [{schema['minimum']}, {schema['maximum']}]"
    return " and ".join(p for p in (lo, hi) if p)


_ARTICLE = {"integer": "an integer", "number": "a number", "string": "a string",
            "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "null"}


def expected(schema: Mapping[str, Any]) -> str:
    """What a value of ``schema`` must be, in words: ``an integer >= 1, or null``."""
    types = _types(schema)
    if "enum" in schema:
        main = f"one of {schema['enum']}"
    else:
        main = " or ".join(_ARTICLE.get(t, t) for t in types if t != "null") or "a value"
        rng = _range(schema)
        if rng:
            main += f" {rng}"
    if "null" in types:
        main += ", or null"
    desc = schema.get("description")
    return f"{main}; {desc}" if desc else main


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
        wanted = " or ".join(_ARTICLE.get(t, t) for t in _types(schema))
        return (key, f"has the wrong type ({error.instance!r} is not {wanted})",
                f"give {expected(schema)}")
    if error.validator == "enum":
        return (key, f"value {error.instance!r} is not allowed",
                f"use one of {error.validator_value}")
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return (key, f"{error.instance!r} is out of range", f"give {expected(schema)}")
    if error.validator in ("minItems", "maxItems"):
        n = len(error.instance)
        return (key, f"has {n} item{'s' if n != 1 else ''}",
                f"give {'at least' if error.validator == 'minItems' else 'at most'} "
                f"{error.validator_value}")
    if error.validator == "uniqueItems":
        return (key, "lists an item twice", "list each item once")
    return (key, error.message, "correct the value (see config/schemas/config.schema.yaml)")


# ------------------------------------------------------------------------------------------
# Strings from --config


_INT = re.compile(r"[-+]?\d+")
_NULL = {"null", "Null", "NULL", "~", ""}
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        return {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _scalar(value: str, types: list[str]) -> Any:
    """``value`` as the first of ``types`` it reads as (numbers: finite ones), else itself."""
    v = value.strip()
    if "integer" in types and _INT.fullmatch(v):
        return int(v)
    if "number" in types:
        try:
            f = float(v)
        except ValueError:
            pass
        else:
            if math.isfinite(f):
                return int(f) if _INT.fullmatch(v) else f
    if "boolean" in types and v in _BOOL:
        return _BOOL[v]
    if "null" in types and v in _NULL:
        return None
    return value


def coerce_strings(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> Any:
    """A copy of ``value`` where each string that sits where ``schema`` wants a number, an
    integer, a boolean or null is read as one (``'4'`` -> 4, ``'false'`` -> False, ``'null'``
    -> None); strings that do not read as one are left for the schema to refuse.

    Snakemake's ``--config`` parses nested values with YAML's base loader, which keeps every
    scalar a string; top-level values and ``--configfile`` files arrive typed.
    """
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    types = _types(schema)
    if isinstance(value, str):
        if "string" in types and not ("null" in types and value.strip() in _NULL - {""}):
            return value
        return _scalar(value, types) if types else value
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            out[k] = coerce_strings(v, sub, root) if sub is not None else v
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_strings(v, schema["items"], root) for v in value]
    return value


# ------------------------------------------------------------------------------------------
# Validation


def _check_schema(config: Any, schema: Mapping[str, Any], source: str, prefix: str = "") -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        key, problem, fix = _describe(errors[0])
        if prefix:
            key = prefix if key == "<top level>" else f"{prefix}.{key}"
        raise LdpmInputError(f"{source}: {key}", problem, fix)


def check_split_fractions(fractions: Mapping[str, Any], where: str = "data.split_fractions") -> dict:
    """Refuse split fractions that are not numbers in [0, 1] (test > 0) summing to 1; returns
    them with strings read as numbers."""
    sub, _ = _schema_at("data.split_fractions")
    fractions = coerce_strings(dict(fractions), sub)
    _check_schema(fractions, sub, where)
    if abs(sum(float(fractions[k]) for k in ("train", "val", "test")) - 1.0) > 1e-6:
        raise LdpmInputError(where, "fractions do not sum to 1", "make train + val + test equal 1")
    return fractions


#: the keys that set how a stage reads its data and steps, and what a stage does without them
#: (the whole split in memory, one batch per step, float32); ``train.<key>`` sets one for every
#: stage that takes it (:func:`run_keys`), ``train.stages.<stage>.<key>`` for one stage
RUN_KEYS: dict[str, Any] = {"loader": "memory", "loader_workers": None, "grad_accum": 1,
                            "amp": None}
#: LDPM's stages that train on the MR slices; ``vae_natural`` trains on photographs
#: (:mod:`ldpm.data.natural`, a fixed set built in memory) and a study's stages train as their
#: study does, both from memory
_LDPM_STREAM_STAGES = ("sketcher", "vae", "denoiser", "controlnet")


def run_keys(stage: str) -> tuple[str, ...]:
    """The :data:`RUN_KEYS` ``stage`` takes: all of them for LDPM's MR stages; ``loader``,
    ``loader_workers`` and ``grad_accum`` for a trained baseline (they train in float32: the
    data-consistency and k-space terms of their networks and losses run FFTs, which bf16
    autocast cannot); none for the others."""
    from .baselines import baselines

    if stage in _LDPM_STREAM_STAGES:
        return tuple(RUN_KEYS)
    if stage in baselines():
        return ("loader", "loader_workers", "grad_accum")
    return ()


def stage_overrides(train: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """What ``ldpm train --overrides`` gets for ``stage`` from the config's ``train`` block: its
    ``train.stages.<stage>`` entry over the global ``train.<key>`` of each :func:`run_keys`
    key (a global key at its :data:`RUN_KEYS` value is left out, so a config without global
    keys and one with them at their defaults give the same overrides)."""
    inherited = {k: train[k] for k in run_keys(stage)
                 if k in train and train[k] != RUN_KEYS[k]}
    return {**inherited, **((train.get("stages") or {}).get(stage) or {})}


def validate_stage_overrides(stage: str, overrides: Mapping[str, Any],
                             where: str = "config") -> dict:
    """``train.stages.<stage>`` checked against its schema (keys, types, ranges); returns it
    with --config strings read as numbers."""
    schema = load_schema()
    stages = schema["properties"]["train"]["properties"]["stages"]["properties"]
    if stage not in stages:
        raise LdpmInputError(f"{where}: train.stages.{stage}", "unknown stage",
                             f"use one of: {', '.join(sorted(stages))}")
    sub = {**_resolve(stages[stage], schema), "$defs": schema.get("$defs", {})}
    overrides = coerce_strings(dict(overrides or {}), sub)
    _check_schema(overrides, sub, where, f"train.stages.{stage}")
    return overrides


def validate_config(config: Mapping[str, Any], source: str | Path = "config",
                    check_paths: bool = True) -> dict:
    """Validate ``config``; raise :class:`LdpmInputError` naming ``source`` and the key.

    Returns a validated copy (strings from ``--config`` read as the numbers the schema wants).
    ``check_paths``: also check that the files and folders the config names exist and are of
    the right kind (:func:`check_config_paths`).
    """
    schema = load_schema()
    config = coerce_strings(copy.deepcopy(dict(config)), schema)
    _check_schema(config, schema, str(source))
    check_split_fractions(config["data"]["split_fractions"], f"{source}: data.split_fractions")
    m = config["masks"]
    if m["center_fraction"] * m["acceleration"] > 1.0 + 1e-9:
        raise LdpmInputError(f"{source}: masks.center_fraction",
                             f"{m['center_fraction']} keeps more lines than 1/acceleration "
                             f"(1/{m['acceleration']}), so the masks would not be "
                             f"{m['acceleration']}x",
                             "use at most 1/acceleration (fastMRI: 4x -> 0.08, 8x -> 0.04)")
    crop_size = config["data"]["crop_size"]
    for stage, overrides in sorted((config["train"].get("stages") or {}).items()):
        crop = (overrides or {}).get("crop")
        if crop is not None and crop > crop_size:
            raise LdpmInputError(f"{source}: train.stages.{stage}.crop",
                                 f"{crop} is larger than the images (data.crop_size {crop_size})",
                                 f"use at most {crop_size}, or null for whole images")
    if config["data"]["source"] == "fastmri" and not config["data"].get("fastmri_root"):
        raise LdpmInputError(f"{source}: data.fastmri_root", "is empty but data.source is fastmri",
                             "set it to the folder holding the fastMRI multicoil *.h5 files")
    if config["data"].get("split") == "folders" and config["data"]["source"] != "fastmri":
        raise LdpmInputError(f"{source}: data.split", "is folders, which needs data.source fastmri "
                             "(fastMRI's multicoil_train/ and multicoil_val/ folders)",
                             "set data.split: subjects for the embedded data")
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
    if check_paths:
        check_config_paths(config, source)
    return config


# ------------------------------------------------------------------------------------------
# Paths


def is_hdf5(path: str | Path) -> bool:
    """Whether ``path`` starts with HDF5's signature (at byte 0 or after a user block)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            offset = 0
            while offset + len(HDF5_SIGNATURE) <= size:
                f.seek(offset)
                if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False
    return False


def _not_found(value: str) -> str:
    p = Path(value)
    return (f"{value} not found" if p.is_absolute()
            else f"{value} not found (relative to the working directory {Path.cwd()})")


def _existing(value: str, key: str, source: str, what: str, folder: bool) -> Path:
    """``value`` as a path that exists and is a folder (``folder``) or a file; else the error
    names ``source: key`` and asks for ``what``."""
    p = Path(value)
    if not p.exists():
        raise LdpmInputError(f"{source}: {key}", _not_found(value), f"set it to {what}")
    if folder != p.is_dir():
        kind = "a file, not a folder" if folder else "a folder, not a file"
        raise LdpmInputError(f"{source}: {key}", f"{value} is {kind}", f"set it to {what}")
    return p


def _file(value: str, key: str, source: str, what: str) -> None:
    _existing(value, key, source, f"{what}, or null", folder=False)


def check_folder(value: str, key: str, source: str, what: str) -> Path:
    """``value`` as an existing folder; else the error names ``source: key`` and asks for ``what``."""
    return _existing(value, key, source, what, folder=True)


def check_fastmri_root(root: str | Path, key: str = "data.fastmri_root",
                       source: str = "config") -> list[Path]:
    """The ``*.h5`` files under ``root`` (what :func:`ldpm.data.fastmri.list_volumes` reads;
    other files are ignored), each checked to be HDF5."""
    what = "the folder of the fastMRI multicoil *.h5 files"
    folder = check_folder(str(root), key, source, what)
    files = sorted(p for p in folder.rglob("*.h5") if p.is_file())
    if not files:
        others = sum(1 for p in folder.rglob("*") if p.is_file())
        raise LdpmInputError(f"{source}: {key}",
                             f"{root} holds no *.h5 files ({others} other files, which are not read)",
                             f"set it to {what}")
    bad = [p for p in files if not is_hdf5(p)]
    if bad:
        more = f" and {len(bad) - 1} more of {len(files)}" if len(bad) > 1 else ""
        raise LdpmInputError(f"{source}: {key}", f"{bad[0]}{more} is not an HDF5 file "
                             "(a failed download or another format named *.h5)",
                             "re-download it or remove it from the folder")
    return files


def check_config_paths(config: Mapping[str, Any], source: str | Path = "config") -> None:
    """The files and folders a validated config names: each set path must exist and be a
    file or a folder as its key means (a registered study checks those of its own block);
    ``data.fastmri_root`` (with ``data.source: fastmri``) must hold HDF5 ``*.h5`` files.
    Relative paths are relative to the working directory."""
    source = str(source)
    pre = config.get("pretrained") or {}
    if pre.get("sd_path"):
        what = "a local diffusers folder of Stable Diffusion 2-1-base (vae/, unet/, text_encoder/, tokenizer/)"
        sd = check_folder(pre["sd_path"], "pretrained.sd_path", source, what)
        needed = ["vae/config.json", "unet/config.json"]
        if not (sd / "null_text_embedding.safetensors").is_file():
            needed += ["text_encoder/config.json", "tokenizer"]
        for part in needed:
            if not (sd / part).exists():
                raise LdpmInputError(f"{source}: pretrained.sd_path", f"{sd} has no {part}",
                                     f"set it to {what}")
    files = [("pretrained.vgg16_path", pre.get("vgg16_path"),
              "a torchvision VGG16 state dict (vgg16-397923af.pth)"),
             ("pretrained.vgg19_path", pre.get("vgg19_path"),
              "a torchvision VGG19 state dict (vgg19-dcbb9e9d.pth)"),
             ("metrics.lpips_backbone", (config.get("metrics") or {}).get("lpips_backbone"),
              "torchvision AlexNet weights (alexnet-owt-7be5be79.pth)"),
             ("metrics.inception_weights", (config.get("metrics") or {}).get("inception_weights"),
              "a TorchScript TF-Inception file")]
    for key, value, what in files:
        if value:
            _file(value, key, source, what)
    from .methods.graph import studies

    for study in studies():
        study.check_paths(config, source)
    data = config.get("data") or {}
    if data.get("source") == "fastmri" and data.get("fastmri_root"):
        check_fastmri_root(data["fastmri_root"], "data.fastmri_root", source)
    if data.get("ood_root"):
        ood = check_fastmri_root(data["ood_root"], "data.ood_root", source)
        root = data.get("fastmri_root") if data.get("source") == "fastmri" else None
        if root and {p.resolve() for p in ood} & set(p.resolve() for p in Path(root).rglob("*.h5")):
            raise LdpmInputError(f"{source}: data.ood_root", f"{data['ood_root']} shares files "
                                 f"with data.fastmri_root {root}, so out-of-distribution volumes "
                                 "would be trained on", "point it at a folder outside fastmri_root")


# ------------------------------------------------------------------------------------------
# Command-line arguments with the config's ranges


def _schema_at(key: str) -> tuple[dict, dict]:
    schema = load_schema()
    node: Mapping[str, Any] = schema
    for part in key.split("."):
        node = _resolve(node, schema)["properties"][part]
    return {**_resolve(node, schema), "$defs": schema.get("$defs", {})}, schema


def config_arg(key: str) -> Callable[[str], Any]:
    """An argparse ``type`` that reads a value as config key ``key`` (``data.crop_size``,
    ``masks.acceleration``, ...) and refuses it outside the schema's type and range, so a
    command-line number obeys the same rules as the config."""
    sub, root = _schema_at(key)

    def parse(text: str) -> Any:
        value = coerce_strings(text, sub)
        errors = list(jsonschema.Draft202012Validator(sub).iter_errors(value))
        if errors:
            raise argparse.ArgumentTypeError(f"{text!r}: give {expected(sub)} (config key {key})")
        return value

    parse.__name__ = key.rsplit(".", 1)[-1]  # argparse names the type in its messages
    return parse


def split_fractions_arg(text: str) -> dict:
    """An argparse ``type`` for ``--split-fractions``: JSON ``{train, val, test}`` in [0, 1]
    summing to 1 (as ``data.split_fractions``)."""
    try:
        fractions = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(fractions, dict):
        raise argparse.ArgumentTypeError("give a JSON object {\"train\": .., \"val\": .., \"test\": ..}")
    try:
        check_split_fractions(fractions, "--split-fractions")
    except LdpmInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return fractions


# ------------------------------------------------------------------------------------------
# Loading


def training_masks(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The masks every training stage draws (``masks.acceleration``, ``masks.center_fraction``
    of ``config``; without one, of ``config/config.yaml``), so that training and test masks
    share one source and one geometry."""
    if config is None:
        with open(CONFIG_FILE) as f:
            config = yaml.safe_load(f)
    m = config["masks"]
    return {"acceleration": int(m["acceleration"]), "center_fraction": float(m["center_fraction"])}


def load_config(path: str | Path = CONFIG_FILE, overrides: Mapping[str, Any] | None = None,
                check_paths: bool = True) -> dict:
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
    return validate_config(config, path, check_paths=check_paths)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict:
    """A copy of ``base`` with ``override`` merged in, recursively for nested mappings."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
