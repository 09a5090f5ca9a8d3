"""Small entry points that the Snakemake rules call: ``ldpm <command> ...``.

Each command does one step of the pipeline, reads only its inputs, writes its outputs
atomically, and stops with one clear message (file or key, and the fix) on bad input.
The science lives in the library; this module only parses arguments and calls it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__, studies  # noqa: F401  (importing the studies registers them)
from .config import config_arg, split_fractions_arg
from .errors import LdpmInputError

log = logging.getLogger("ldpm")

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}


def command(fn: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    COMMANDS[fn.__name__.replace("_", "-")] = fn
    return fn


def _json(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e


def _named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected STAGE=FOLDER, got {text!r}")
    return name, Path(path)


# --------------------------------------------------------------------------- data
@command
def embedded(a: argparse.Namespace) -> None:
    """Build one embedded subject's fastMRI-format multicoil HDF5 files."""
    from .data.embedded import build_subject

    paths = build_subject(a.subject, a.out_dir, a.embedded, crop_size=a.crop_size,
                          drop_last_slices=a.drop_last_slices, seed=a.seed)
    log.info("wrote %d volumes for subject %d to %s", len(paths), a.subject, a.out_dir)


@command
def embedded_ood(a: argparse.Namespace) -> None:
    """Write the embedded default's out-of-distribution set (dipy's real scans) as fastMRI files
    (``--val``: OOD-val, the two other scans used only to choose recipes)."""
    from .data.ood import build_ood

    paths = build_ood(a.out_dir, a.embedded, crop_size=a.crop_size,
                      drop_last_slices=a.drop_last_slices, seed=a.seed, val=a.val)
    log.info("wrote %d out-of-distribution volumes to %s", len(paths), a.out_dir)


@command
def preprocess(a: argparse.Namespace) -> None:
    """One fastMRI volume -> its RSS slice store (last slices dropped, center-cropped)."""
    from .data.store import preprocess_volume

    preprocess_volume(a.input, a.output, crop_size=a.crop_size, drop_last_slices=a.drop_last_slices)


@command
def manifest(a: argparse.Namespace) -> None:
    """Gather the slice stores into one manifest with a seeded by-subject split."""
    from .data.store import build_manifest

    build_manifest(a.stores, a.output, split_fractions=a.split_fractions, seed=a.seed,
                   split=a.split)


@command
def test_shard(a: argparse.Namespace) -> None:
    """Write test shard k: ground truth and its fixed, seeded undersampling masks."""
    from .data.store import write_test_shard

    write_test_shard(a.manifest, a.shard, a.n_shards, a.output, acceleration=a.acceleration,
                     center_fraction=a.center_fraction, mask_seed=a.mask_seed)


# --------------------------------------------------------------------------- training
@command
def train(a: argparse.Namespace) -> None:
    """Train one stage (LDPM's sketcher/vae/denoiser/controlnet, or a baseline); resumable."""
    from .train.stages import run_stage

    run_stage(a.stage, a.manifest, a.out_dir, a.overrides, a.preset, a.seed,
              deps=dict(a.dep or []), pretrained=a.pretrained, device=a.device, masks=a.masks)


# --------------------------------------------------------------------------- methods
@command
def reconstruct(a: argparse.Namespace) -> None:
    """Reconstruct one test shard with one method."""
    from .methods import reconstruct_shard

    from .device import resolve_device

    options = {**a.options, "device": str(resolve_device(a.device))}
    reconstruct_shard(a.method, a.shard_data, a.output, checkpoints=dict(a.checkpoint or []),
                      options=options)


@command
def predict(a: argparse.Namespace) -> None:
    """Reconstruct your own fastMRI-format file(s) with trained models (fastMRI's submission layout)."""
    from .config import load_config
    from .device import resolve_device
    from .predict import predict as run_predict

    config = load_config(a.config) if a.config else load_config()
    written = run_predict(a.method, a.input, a.output_dir, config, models=a.models,
                          checkpoints=dict(a.checkpoint or []), acceleration=a.acceleration,
                          center_fraction=a.center_fraction, mask_seed=a.mask_seed,
                          use_file_mask=not a.ignore_file_mask,
                          device=str(resolve_device(a.device)))
    log.info("wrote %d reconstruction(s) to %s", len(written), a.output_dir)


@command
def val_score(a: argparse.Namespace) -> None:
    """Score one method on the val split (for tuning; the test split is not read)."""
    from .metrics.val_score import score_split
    from .device import resolve_device

    options = {**a.options, "device": str(resolve_device(a.device))}
    summary = score_split(a.method, a.manifest, dict(a.checkpoint or []), options, a.masks, a.out_dir)
    m = summary["metrics"]
    log.info("%s on val: PSNR %.2f ± %.2f dB, SSIM %.4f (%d volumes)", a.method, m["psnr"]["mean"],
             m["psnr"]["std"], m["ssim"]["mean"], summary["n_volumes"])


# --------------------------------------------------------------------------- metrics
@command
def evaluate(a: argparse.Namespace) -> None:
    """Score one method's reconstructions of every test shard."""
    from .metrics.evaluate import evaluate_method

    evaluate_method(a.recon, a.data, a.manifest, a.out_dir, a.method,
                    lpips_backbone=a.lpips_backbone, inception_weights=a.inception_weights,
                    kid_subset_size=a.kid_subset_size, reference=a.reference_features,
                    perceptual=not a.pixel_only)


@command
def reference_features(a: argparse.Namespace) -> None:
    """Compute the test ground truth's Inception features once, for every method's rFID/KID."""
    from .metrics.evaluate import reference_features as write_reference

    write_reference(a.data, a.output, inception_weights=a.inception_weights)
    log.info("wrote %s", a.output)


@command
def vae_recon(a: argparse.Namespace) -> None:
    """Encode and decode every ground-truth test slice with the MR-VAE and the untuned/SD VAE (Fig. 3)."""
    from .metrics.vae_eval import vae_recon_test_set

    written = vae_recon_test_set(a.data, a.vae_dir, a.sd_path or None,
                                 {k: p for k, p in a.output}, batch_size=a.batch_size,
                                 untuned_dir=a.untuned_dir or None)
    log.info("wrote %s", ", ".join(f"{k}: {p}" for k, p in written.items()))


@command
def provenance(a: argparse.Namespace) -> None:
    """Record config, git commit, package versions and data hashes of this run."""
    from .report.provenance import write_provenance

    write_provenance(a.output, config_json=a.config, hashed_files=a.hash, manifest=a.manifest)


# --------------------------------------------------------------------------- DiffCode
@command
def diffcode_train(a: argparse.Namespace) -> None:
    """Train one DiffCode stage (bank, retrieval, restore*, unet, swinir); resumable."""
    from .studies.diffcode.train import train_stage

    if a.config.get("stage") != a.stage:
        raise LdpmInputError("--config", f"is the config of stage {a.config.get('stage')!r}, not {a.stage!r}",
                             "pass ldpm.studies.diffcode.config.diffcode_stage_config(config, stage) as JSON")
    train_stage(a.config, a.manifest, a.out_dir, a.seed, deps=dict(a.dep or []), device=a.device)


@command
def diffcode_evaluate(a: argparse.Namespace) -> None:
    """Score one DiffCode-family method on every task's test set (PSNR/SSIM/RMSE per task)."""
    from .studies.diffcode.evaluate import evaluate_diffcode_method

    evaluate_diffcode_method(a.method, a.shards, dict(a.model or []), a.config, a.output, a.per_volume,
                             device=a.device)


def _embedded_args(s: argparse.ArgumentParser) -> None:
    """The arguments ``embedded`` and ``embedded-ood`` share: where to write, the config's
    ``embedded`` block, the slices' crop and dropped slices, and the seed."""
    s.add_argument("--out-dir", type=Path, required=True)
    s.add_argument("--embedded", type=_json, required=True,
                   help="the config's `embedded` block as JSON")
    s.add_argument("--crop-size", type=config_arg("data.crop_size"), required=True)
    s.add_argument("--drop-last-slices", type=config_arg("data.drop_last_slices"), required=True)
    s.add_argument("--seed", type=int, required=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ldpm", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"ldpm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("embedded", help=embedded.__doc__)
    s.add_argument("--subject", type=int, required=True)
    _embedded_args(s)
    s = sub.add_parser("embedded-ood", help=embedded_ood.__doc__)
    _embedded_args(s)
    s.add_argument("--val", action="store_true",
                   help="write OOD-val (for choosing recipes) instead of Table III's OOD set")

    s = sub.add_parser("preprocess", help=preprocess.__doc__)
    s.add_argument("--input", type=Path, required=True)
    s.add_argument("--output", type=Path, required=True)
    s.add_argument("--crop-size", type=config_arg("data.crop_size"), required=True)
    s.add_argument("--drop-last-slices", type=config_arg("data.drop_last_slices"), required=True)

    s = sub.add_parser("manifest", help=manifest.__doc__)
    s.add_argument("--stores", type=Path, nargs="+", required=True)
    s.add_argument("--output", type=Path, required=True)
    s.add_argument("--split-fractions", type=split_fractions_arg, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--split", choices=["subjects", "folders", "test"], default="subjects",
                   help="by subject (seeded), or fastMRI's *_train / *_val folders (data.split), "
                   "or every volume in test (the out-of-distribution set)")

    s = sub.add_parser("test-shard", help=test_shard.__doc__)
    s.add_argument("--manifest", type=Path, required=True)
    s.add_argument("--shard", type=int, required=True)
    s.add_argument("--n-shards", type=config_arg("inference.n_shards"), required=True)
    s.add_argument("--output", type=Path, required=True)
    s.add_argument("--acceleration", type=config_arg("masks.acceleration"), required=True)
    s.add_argument("--center-fraction", type=config_arg("masks.center_fraction"), required=True)
    s.add_argument("--mask-seed", type=int, required=True)

    s = sub.add_parser("train", help=train.__doc__)
    s.add_argument("--stage", required=True)
    s.add_argument("--manifest", type=Path, required=True)
    s.add_argument("--out-dir", type=Path, required=True)
    s.add_argument("--overrides", type=_json, default={}, help="train.stages.<stage> as JSON")
    s.add_argument("--preset", choices=["default", "paper"], default="default")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--dep", type=_named_path, action="append", metavar="STAGE=FOLDER",
                   help="an earlier stage's training folder, e.g. vae=results/models/vae")
    s.add_argument("--pretrained", type=_json, default={}, help="the config's `pretrained` block")
    s.add_argument("--masks", type=_json, default=None,
                   help="the config's `masks` block (default: config/config.yaml's)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: a GPU if one is visible (under torchrun: this rank's), else the CPU")

    s = sub.add_parser("reconstruct", help=reconstruct.__doc__)
    s.add_argument("--method", required=True)
    s.add_argument("--shard-data", type=Path, required=True)
    s.add_argument("--output", type=Path, required=True)
    s.add_argument("--checkpoint", type=_named_path, action="append", metavar="STAGE=FOLDER",
                   help="a trained model folder, e.g. unet=results/models/unet (repeatable)")
    s.add_argument("--options", type=_json, default={}, help="method options as JSON")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: a GPU if one is visible, else the CPU")

    s = sub.add_parser("predict", help=predict.__doc__)
    s.add_argument("--method", required=True, help="e.g. ldpm, unet, varnet, zero_filled")
    s.add_argument("--input", type=Path, required=True, help="a fastMRI-format .h5 file or a folder of them")
    s.add_argument("--output-dir", type=Path, required=True, help="one <name>.h5 per input ('reconstruction')")
    s.add_argument("--models", type=Path, default=None,
                   help="the trained stages' folder (results/models of a finished run or dvc pull)")
    s.add_argument("--checkpoint", type=_named_path, action="append", metavar="STAGE=FOLDER",
                   help="a stage's training folder, instead of <models>/<stage> (repeatable)")
    s.add_argument("--config", type=Path, default=None,
                   help="the run's config (default: config/config.yaml): crop, masks, sampler")
    s.add_argument("--acceleration", type=config_arg("masks.acceleration"), default=None,
                   help="default: masks.acceleration")
    s.add_argument("--center-fraction", type=config_arg("masks.center_fraction"), default=None,
                   help="default: masks.center_fraction")
    s.add_argument("--mask-seed", type=int, default=None, help="default: masks.seed")
    s.add_argument("--ignore-file-mask", action="store_true",
                   help="simulate the seeded masks even where a file has its own 'mask'")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    s = sub.add_parser("val-score", help=val_score.__doc__)
    s.add_argument("--method", required=True)
    s.add_argument("--manifest", type=Path, required=True)
    s.add_argument("--checkpoint", type=_named_path, action="append", metavar="STAGE=FOLDER",
                   help="a trained model folder, e.g. unet=results/models/unet (repeatable)")
    s.add_argument("--options", type=_json, default={}, help="method options as JSON")
    s.add_argument("--masks", type=_json, required=True, help="the config's `masks` block")
    s.add_argument("--out-dir", type=Path, required=True)
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: a GPU if one is visible, else the CPU")

    s = sub.add_parser("evaluate", help=evaluate.__doc__)
    s.add_argument("--method", required=True)
    s.add_argument("--recon", type=Path, nargs="+", required=True)
    s.add_argument("--data", type=Path, nargs="+", required=True)
    s.add_argument("--manifest", type=Path, required=True)
    s.add_argument("--out-dir", type=Path, required=True)
    s.add_argument("--lpips-backbone", default=None)
    s.add_argument("--inception-weights", default=None)
    s.add_argument("--kid-subset-size", type=config_arg("metrics.kid_subset_size"), default=1000)
    s.add_argument("--reference-features", type=Path, default=None,
                   help="the ground truth's Inception features (ldpm reference-features)")
    s.add_argument("--pixel-only", action="store_true",
                   help="PSNR/SSIM/NMSE only; LPIPS, rFID and KID are n/a (the OOD set)")

    s = sub.add_parser("reference-features", help=reference_features.__doc__)
    s.add_argument("--data", type=Path, nargs="+", required=True, help="all test shards")
    s.add_argument("--inception-weights", default=None)
    s.add_argument("--output", type=Path, required=True, help="the .npz to write")

    s = sub.add_parser("vae-recon", help=vae_recon.__doc__)
    s.add_argument("--data", type=Path, nargs="+", required=True, help="all test shards")
    s.add_argument("--vae-dir", type=Path, required=True, help="the vae stage's training folder")
    s.add_argument("--sd-path", default="", help="Stable Diffusion folder ('' = none: untuned VAE)")
    s.add_argument("--untuned-dir", default="",
                   help="without SD: the vae_natural stage's training folder (the untuned VAE)")
    s.add_argument("--output", type=_named_path, action="append", required=True, metavar="KIND=FILE",
                   help="mr=results/vae_recon/mr.h5 and/or untuned=results/vae_recon/untuned.h5")
    s.add_argument("--batch-size", type=config_arg("diffcode.eval_batch_size"), default=8)

    s = sub.add_parser("provenance", help=provenance.__doc__)
    s.add_argument("--output", type=Path, required=True)
    s.add_argument("--config", required=True, help="the run's config as JSON")
    s.add_argument("--hash", type=Path, nargs="*", default=[], help="files whose SHA-256 to record")
    s.add_argument("--manifest", type=Path, default=None,
                   help="the run's manifest: the raw volumes it was made from are hashed too")

    s = sub.add_parser("diffcode-train", help=diffcode_train.__doc__)
    s.add_argument("--stage", required=True)
    s.add_argument("--manifest", type=Path, required=True)
    s.add_argument("--out-dir", type=Path, required=True)
    s.add_argument("--config", type=_json, required=True, help="the stage's resolved config as JSON")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--dep", type=_named_path, action="append", metavar="STAGE=FOLDER",
                   help="an earlier DiffCode stage, e.g. bank=results/models/diffcode_bank")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    s = sub.add_parser("diffcode-evaluate", help=diffcode_evaluate.__doc__)
    s.add_argument("--method", required=True)
    s.add_argument("--shards", type=Path, nargs="+", required=True, help="all test shards")
    s.add_argument("--model", type=_named_path, action="append", metavar="STAGE=FOLDER",
                   help="a trained stage the method uses (repeatable)")
    s.add_argument("--config", type=_json, required=True, help="the evaluation config as JSON")
    s.add_argument("--output", type=Path, required=True, help="summary JSON")
    s.add_argument("--per-volume", type=Path, required=True, help="per-volume CSV")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return p


#: the fix of each file-system error that a path the user chose causes
_PATH_FIXES: dict[type, str] = {
    PermissionError: "give this user access to that path and its folder (chmod/chown), or "
                     "choose another output folder",
    NotADirectoryError: "a part of that path is a file where a folder is needed: move the file "
                        "away, or choose another output folder",
    IsADirectoryError: "a folder is where a file is to be written: move the folder away, or "
                       "choose another output path",
    FileExistsError: "a file is where a folder is to be made: move the file away, or choose "
                     "another output folder",
}


def path_error(e: OSError) -> LdpmInputError | None:
    """The :class:`LdpmInputError` of a permission or file-versus-folder error on a path (None
    for other OS errors)."""
    fix = next((f for cls, f in _PATH_FIXES.items() if isinstance(e, cls)), None)
    if fix is None:
        return None
    where = e.filename if e.filename is not None else "a path"
    problem = (e.strerror or str(e)).rstrip(".").lower()
    if e.filename2 is not None:
        problem += f" (to {e.filename2})"
    return LdpmInputError(where, problem, fix)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        COMMANDS[args.command](args)
    except LdpmInputError as e:
        print(f"ldpm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        err = path_error(e)
        if err is None:
            raise
        if args.verbose:
            log.exception("file-system error")
        print(f"ldpm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
