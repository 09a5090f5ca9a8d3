"""Data: the fastMRI multicoil reader, the embedded real-MRI default, slice stores and shards.

``fastmri`` reads fastMRI files into RSS targets; ``embedded`` writes fastMRI-format files
from the MNI152 template shipped in nilearn (real anatomy, simulated contrast and coils);
``store`` turns volumes into slice stores, a subject-split manifest and test shards;
``dataset`` (imported on its own, it needs torch) serves a split to training code.
"""

from .fastmri import VolumeSlices, list_volumes, read_volume, rss_target
from .embedded import (EmbeddedVolume, build_subject, embedded_subjects, embedded_volume_names,
                       embedded_volumes, subject_of, subject_volume_names)
from .store import (build_manifest, load_split, preprocess_volume, read_manifest,
                    read_shard, read_test_shard, split_subjects, write_test_shard)

__all__ = [
    "VolumeSlices", "read_volume", "list_volumes", "rss_target",
    "EmbeddedVolume", "embedded_volumes", "build_subject", "embedded_subjects",
    "embedded_volume_names", "subject_of", "subject_volume_names",
    "preprocess_volume", "build_manifest", "read_manifest", "split_subjects", "load_split",
    "write_test_shard", "read_shard", "read_test_shard",
]
