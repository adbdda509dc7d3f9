"""Realistic scene sets for the assist-quality benchmarks (issue 15): emoji objects of 24
long-tailed classes and look-alike distractors on real photographs, with occlusion,
truncation, lighting, blur, noise and JPEG artefacts, in a "standard" and a "hard" preset.

Deterministic from a seed, built only from files Debian packages ship (see material.py), and
written as JPEG files plus a COCO file (`python -m benchmarks.realistic --help`).
"""

from benchmarks.realistic.catalog import CLASS_NAMES, class_frequencies, label_config
from benchmarks.realistic.compose import PRESETS, Preset, Scene, make_scene, preset_for
from benchmarks.realistic.dataset import contact_sheet, file_name, scenes_as_coco, write_dataset
from benchmarks.realistic.material import SOURCES, MissingMaterial

__all__ = ["CLASS_NAMES", "PRESETS", "SOURCES", "MissingMaterial", "Preset", "Scene",
           "class_frequencies", "contact_sheet", "file_name", "label_config", "make_scene",
           "preset_for", "scenes_as_coco", "write_dataset"]
