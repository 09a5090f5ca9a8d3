"""Config validation: every bad key, type, range or path stops with one message naming the key and fix."""

import pytest
import yaml

import ldpm.studies  # noqa: F401  (registers the studies, as the command line and the Snakefile do)
from ldpm.config import CONFIG_FILE, deep_merge, load_config, validate_config
from ldpm.errors import LdpmInputError


@pytest.fixture
def default():
    with open(CONFIG_FILE) as f:
        return yaml.safe_load(f)


def test_default_config_is_valid():
    cfg = load_config()
    assert cfg["data"]["source"] == "embedded"


def _paper(overrides: dict) -> dict:
    """config/presets/paper.yaml (only what differs from config.yaml) with ``overrides``, to be
    merged over config/config.yaml as ``--configfile`` does."""
    paper = yaml.safe_load((CONFIG_FILE.parent / "presets" / "paper.yaml").read_text())
    return deep_merge(paper, overrides)


def test_paper_preset_is_valid(default):
    """Its keys and values (its placeholder paths are checked in the test of paths below)."""
    load_config(CONFIG_FILE, _paper({"pretrained": {"vgg16_path": "/weights/vgg16-397923af.pth"}}),
                check_paths=False)


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


# ------------------------------------------------------------------------------ stage overrides

def _stage_presets():
    from ldpm.methods.graph import studies
    from ldpm.train import baselines, presets

    return {p: {**core, **base, **{k: v for s in studies() if s.presets for k, v in s.presets(p).items()}}
            for p, core, base in (("default", presets.DEFAULT_CONFIG, baselines.DEFAULT_CONFIGS),
                                  ("paper", presets.PAPER_CONFIG, baselines.PAPER_CONFIGS))}


def test_stage_schemas_have_exactly_the_presets_keys():
    """... and the streaming stages the run keys they take (loader, grad_accum, ...) besides."""
    from ldpm.config import load_schema, run_keys as stage_run_keys
    from ldpm.methods.graph import all_stages

    STAGES = all_stages()

    schema = load_schema()
    stages = schema["properties"]["train"]["properties"]["stages"]["properties"]
    assert sorted(stages) == sorted(STAGES)
    for preset, configs in _stage_presets().items():
        for stage in STAGES:
            ref = stages[stage]["$ref"].rsplit("/", 1)[-1]
            run_keys = set(stage_run_keys(stage))
            assert not run_keys & set(configs[stage]), (preset, stage)
            assert set(schema["$defs"][ref]["properties"]) == set(configs[stage]) | run_keys, \
                (preset, stage)


def test_every_preset_value_is_a_valid_override():
    """The schema's ranges admit what the presets use (the paper's frozen denoiser, which
    has no learning rate, batch size or steps, is the one stage that never trains)."""
    from ldpm.config import validate_stage_overrides

    for preset, configs in _stage_presets().items():
        for stage, cfg in configs.items():
            if preset == "paper" and stage == "denoiser":
                continue
            validate_stage_overrides(stage, cfg, preset)


@pytest.mark.parametrize("stage,override,key,fix", [
    ("unet", {"n_steps": -5}, "train.stages.unet.n_steps", "integer >= 1"),
    ("unet", {"n_steps": "abc"}, "train.stages.unet.n_steps", "integer >= 1"),
    ("unet", {"batch_size": 0}, "train.stages.unet.batch_size", "integer >= 1"),
    ("sketcher", {"lr": 0}, "train.stages.sketcher.lr", "number > 0"),
    ("sketcher", {"lr": "fast"}, "train.stages.sketcher.lr", "number > 0"),
    ("controlnet", {"crop": 0}, "train.stages.controlnet.crop", "integer >= 8"),
    ("vae", {"ckpt_every": 0}, "train.stages.vae.ckpt_every", "integer >= 1"),
    ("vae", {"betas": [0.5]}, "train.stages.vae.betas", "at least 2"),
    ("vae", {"disc": {"ndf": 16, "n_layer": 2}}, "train.stages.vae.disc.n_layer", "n_layers"),
    ("denoiser", {"flip": "sometimes"}, "train.stages.denoiser.flip", "true or false"),
    ("swinmr", {"loss": {"alpha": -1.0}}, "train.stages.swinmr.loss.alpha", ">= 0"),
    ("unet", {"loss": "l2"}, "train.stages.unet.loss", "use one of"),
    ("score_mri", {"sampler": {"predictor": "euler"}}, "train.stages.score_mri.sampler.predictor", "use one of"),
    ("score_mri", {"epochs": 0}, "train.stages.score_mri.epochs", "number > 0"),
    ("lora_r4", {"rank": 0}, "train.stages.lora_r4.rank", "integer >= 1"),
    ("lora_t1", {"lr": 1e-3}, "train.stages.lora_t1.lr", "remove it"),
    ("lora_t2", {"contrasts": ["PD"]}, "train.stages.lora_t2.contrasts.0", "use one of"),
    ("varnet", {"n_step": 5}, "train.stages.varnet.n_step", "n_steps"),
])
def test_bad_stage_overrides_are_refused_with_the_key(default, stage, override, key, fix):
    cfg = deep_merge(default, {"train": {"stages": {stage: override}}})
    with pytest.raises(LdpmInputError) as e:
        validate_config(cfg, "my.yaml")
    msg = str(e.value)
    assert msg.startswith(f"my.yaml: {key}: ") and fix in msg and "\n" not in msg, msg


def test_good_stage_overrides_pass(default):
    cfg = deep_merge(default, {"train": {"stages": {
        "unet": {"n_steps": 5, "batch_size": 1, "crop": None},
        "sketcher": {"lr": 5e-4, "lr_schedule": "constant", "crop": 32, "n_steps": None, "epochs": 2},
        "lora_t1": {"contrasts": ["T1"], "alpha": None, "targets": ["to_q"]}}}})
    assert validate_config(cfg)["train"]["stages"]["unet"]["n_steps"] == 5


# ------------------------------------------------------------------------------ ranges

@pytest.mark.parametrize("override,key,fix", [
    ({"masks": {"acceleration": 1}}, "masks.acceleration", "integer >= 2"),
    ({"masks": {"acceleration": 4.5}}, "masks.acceleration", "integer >= 2"),
    ({"masks": {"center_fraction": 0}}, "masks.center_fraction", "in (0, 1)"),
    ({"masks": {"center_fraction": 1.0}}, "masks.center_fraction", "in (0, 1)"),
    ({"masks": {"acceleration": 8, "center_fraction": 0.2}}, "masks.center_fraction", "1/acceleration"),
    ({"data": {"crop_size": 4}}, "data.crop_size", "integer >= 8"),
    ({"data": {"drop_last_slices": -1}}, "data.drop_last_slices", "integer >= 0"),
    ({"data": {"split_fractions": {"train": 1.1, "val": 0.0, "test": -0.1}}},
     "data.split_fractions.test", "> 0"),
    ({"data": {"split_fractions": {"train": 0.8, "val": 0.2, "test": 0.0}}},
     "data.split_fractions.test", "> 0"),
    ({"train": {"stages": {"swinmr": {"crop": 256}}}}, "train.stages.swinmr.crop", "at most 128"),
    ({"inference": {"n_shards": 0}}, "inference.n_shards", "integer >= 1"),
    ({"data": {"split": "folders"}}, "data.split", "data.split: subjects"),
])
def test_out_of_range_values_are_refused(default, override, key, fix):
    with pytest.raises(LdpmInputError) as e:
        validate_config(deep_merge(default, override), "my.yaml")
    msg = str(e.value)
    assert msg.startswith(f"my.yaml: {key}: ") and fix in msg, msg


def test_command_line_numbers_obey_the_config_ranges():
    import argparse

    from ldpm.config import config_arg, split_fractions_arg

    assert config_arg("data.crop_size")("64") == 64
    assert config_arg("masks.center_fraction")("0.08") == 0.08
    assert config_arg("data.drop_last_slices")("0") == 0
    assert config_arg("diffcode.eval_batch_size")("3") == 3
    for key, text in [("data.crop_size", "4"), ("data.crop_size", "x"), ("masks.acceleration", "1"),
                      ("masks.center_fraction", "1.5"), ("data.drop_last_slices", "-1"),
                      ("diffcode.eval_batch_size", "0")]:
        with pytest.raises(argparse.ArgumentTypeError, match=key):
            config_arg(key)(text)
    assert split_fractions_arg('{"train": 0.6, "val": 0.2, "test": 0.2}')["test"] == 0.2
    with pytest.raises(argparse.ArgumentTypeError, match="sum to 1"):
        split_fractions_arg('{"train": 0.6, "val": 0.2, "test": 0.3}')
    with pytest.raises(argparse.ArgumentTypeError, match="test"):
        split_fractions_arg('{"train": 0.6, "val": 0.4, "test": 0}')


# ------------------------------------------------------------------------------ --config strings

def test_nested_command_line_strings_are_read_as_the_schema_types(default):
    """Snakemake's --config keeps every nested scalar a string: those are read as numbers,
    booleans and null where the schema wants them; other strings are still refused."""
    cfg = deep_merge(default, {"masks": {"acceleration": "4", "center_fraction": "0.08"},
                               "diffcode": {"enabled": "false", "sr_scale": "2"},
                               "lora": {"step_counts": ["10", "20"]},
                               "pretrained": {"sd_path": "null"},
                               "train": {"stages": {"unet": {"n_steps": "5", "lr": "1e-3",
                                                             "crop": "null"}}}})
    out = validate_config(cfg)
    assert out["masks"] == {"acceleration": 4, "center_fraction": 0.08, "seed": 2024}
    assert out["diffcode"]["enabled"] is False and out["diffcode"]["sr_scale"] == 2
    assert out["lora"]["step_counts"] == [10, 20] and out["pretrained"]["sd_path"] is None
    assert out["train"]["stages"]["unet"] == {"n_steps": 5, "lr": 1e-3, "crop": None}
    assert out["data"]["source"] == "embedded"
    with pytest.raises(LdpmInputError, match="masks.acceleration: has the wrong type"):
        validate_config(deep_merge(default, {"masks": {"acceleration": "eight"}}))


# ------------------------------------------------------------------------------ snakemake

def _dry_run(tmp_path, *args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ldpm.config import REPO_ROOT

    from conftest import SNAKEMAKE as snakemake
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    work = tmp_path / "w"
    proc = subprocess.run([snakemake, "-n", "all", "--snakefile", str(REPO_ROOT / "Snakefile"),
                           "--directory", str(work), *args],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    return proc, work


@pytest.mark.parametrize("args,key", [
    (["--config", "unknown_block=1"], "unknown_block: unknown key"),
    (["--config", "masks={acceleraton: 4}"], "masks.acceleraton: unknown key"),
    (["--config", "train={stages: {unet: {n_steps: -5}}}"], "train.stages.unet.n_steps: -5 is out of range"),
    (["--config", "pretrained={vgg16_path: missing/vgg16.pth}"], "pretrained.vgg16_path: missing/vgg16.pth not found"),
])
def test_snakemake_refuses_a_bad_config_in_one_line(tmp_path, args, key):
    proc, work = _dry_run(tmp_path, *args)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0
    assert key in out and "Fix:" in out and len(out.splitlines()) <= 2, out[:3000]
    assert not work.exists() or not any(work.iterdir())


def test_snakemake_reads_nested_config_numbers(tmp_path):
    proc, _ = _dry_run(tmp_path, "--quiet", "rules", "--config", "masks={acceleration: 4}",
                       "diffcode={enabled: false}", "lora={enabled: false}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "diffcode_train" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ paths

def _sd_folder(root):
    for part in ("vae", "unet", "text_encoder"):
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text("{}")
    (root / "tokenizer").mkdir()
    return root


@pytest.mark.parametrize("block,key", [
    ("pretrained", "sd_path"), ("pretrained", "vgg16_path"), ("pretrained", "vgg19_path"),
    ("metrics", "lpips_backbone"), ("metrics", "inception_weights"),
    ("diffcode", "ct_path"), ("diffcode", "pet_path"),
])
def test_missing_weights_and_folders_are_refused_at_config_time(default, tmp_path, block, key):
    with pytest.raises(LdpmInputError) as e:
        validate_config(deep_merge(default, {block: {key: str(tmp_path / "nope")}}), "my.yaml")
    assert str(e.value).startswith(f"my.yaml: {block}.{key}: ") and "not found" in str(e.value)


def test_weights_and_folders_must_be_of_the_right_kind(default, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    (tmp_path / "alexnet.pth").write_bytes(b"w")
    with pytest.raises(LdpmInputError, match="vgg16_path: weights is a folder, not a file"):
        validate_config(deep_merge(default, {"pretrained": {"vgg16_path": "weights"}}))
    with pytest.raises(LdpmInputError, match="sd_path: alexnet.pth is a file, not a folder"):
        validate_config(deep_merge(default, {"pretrained": {"sd_path": "alexnet.pth"}}))
    sd = _sd_folder(tmp_path / "sd")
    (sd / "unet" / "config.json").unlink()
    with pytest.raises(LdpmInputError, match="sd_path: .*has no unet/config.json"):
        validate_config(deep_merge(default, {"pretrained": {"sd_path": "sd"}}))
    (sd / "unet" / "config.json").write_text("{}")
    (tmp_path / "ct").mkdir()
    cfg = validate_config(deep_merge(default, {"pretrained": {"sd_path": "sd"},
                                               "metrics": {"lpips_backbone": "alexnet.pth"},
                                               "diffcode": {"ct_path": "ct"}}))
    assert cfg["pretrained"]["sd_path"] == "sd"


def _h5(path):
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["kspace"] = [[0]]


def test_fastmri_root_must_hold_hdf5_files(default, tmp_path):
    root = tmp_path / "fastmri"

    def check():
        validate_config(deep_merge(default, {"data": {"source": "fastmri",
                                                      "fastmri_root": str(root)}}), "my.yaml")

    with pytest.raises(LdpmInputError, match="my.yaml: data.fastmri_root: .*fastmri not found"):
        check()
    root.mkdir()
    (root / "README.txt").write_text("notes")
    with pytest.raises(LdpmInputError, match=r"holds no \*.h5 files \(1 other files"):
        check()
    _h5(root / "train" / "file_brain_AXT1_001.h5")
    check()  # other files are not read, so they pass
    (root / "train" / "file_brain_AXT2_002.h5").write_text("<html>404</html>")
    with pytest.raises(LdpmInputError, match=r"file_brain_AXT2_002.h5 is not an HDF5 file"):
        check()


def test_ood_root_must_hold_hdf5_files_outside_the_training_data(default, tmp_path):
    root, ood = tmp_path / "fastmri", tmp_path / "knee"
    _h5(root / "multicoil_train" / "file_brain_AXT1_001.h5")

    def check(ood_root):
        validate_config(deep_merge(default, {"data": {"source": "fastmri", "fastmri_root": str(root),
                                                      "ood_root": str(ood_root)}}), "my.yaml")

    with pytest.raises(LdpmInputError, match="my.yaml: data.ood_root: .*knee not found"):
        check(ood)
    _h5(ood / "file1000002.h5")
    check(ood)
    with pytest.raises(LdpmInputError, match="data.ood_root: .* shares files with data.fastmri_root"):
        check(root / "multicoil_train")


def test_paper_preset_with_its_paths_set_is_valid(tmp_path):

    _h5(tmp_path / "fastmri" / "file_brain_AXT1_001.h5")
    (tmp_path / "vgg16.pth").write_bytes(b"w")
    _h5(tmp_path / "knee" / "file1000002.h5")
    cfg = load_config(CONFIG_FILE, _paper({"data": {"fastmri_root": str(tmp_path / "fastmri"),
                                                    "ood_root": str(tmp_path / "knee")},
                                           "pretrained": {"sd_path": str(_sd_folder(tmp_path / "sd")),
                                                          "vgg16_path": str(tmp_path / "vgg16.pth")}}))
    assert cfg["train"]["preset"] == "paper"
    with pytest.raises(LdpmInputError, match="sd_path: /path/to/stable-diffusion-2-1-base not found"):
        load_config(CONFIG_FILE, _paper({"pretrained": {"vgg16_path": str(tmp_path / "vgg16.pth")}}))
