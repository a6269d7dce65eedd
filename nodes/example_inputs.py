"""The example image, speech and video clip the TI2V / A2V / Extend templates open with, put into ComfyUI's input
folder.

ComfyUI has no way for a custom node pack's templates to bring input files (only its own core templates get
sample media), and Load Image / Load Audio / Load Video only offer files in ``input/``: without them the templates
open with "Missing Inputs". So when ComfyUI loads the pack, the three files in ``example_inputs/`` (made by
workflows/build_workflows.py: a drawn portrait, a synthetic voice-like clip and a short MP4 of the portrait
speaking it) are copied there, each only if no file of that name exists; a user's file is never replaced.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from . import compat

log = logging.getLogger("magihuman.nodes")

EXAMPLE_INPUTS_DIR = Path(__file__).resolve().parents[1] / "example_inputs"
EXAMPLE_IMAGE = "magihuman_example_portrait.png"   # Load Image of the TI2V templates
EXAMPLE_AUDIO = "magihuman_example_speech.wav"     # Load Audio of the A2V templates
EXAMPLE_CLIP = "magihuman_example_clip.mp4"        # Load Video of the Extend template
EXAMPLE_FILES = (EXAMPLE_IMAGE, EXAMPLE_AUDIO, EXAMPLE_CLIP)


def install_example_inputs(input_dir: str | os.PathLike | None = None) -> list[str]:
    """Copy the example files that are missing from ``input_dir`` (default: ComfyUI's input folder) into it.

    Returns the names copied. Never overwrites: an existing file of the same name is left as it is. Problems
    (read-only folder, a file missing from the pack) are logged, not raised: the pack works without them."""
    target = input_dir if input_dir is not None else compat.input_directory()
    if target is None:
        return []
    copied = []
    for name in EXAMPLE_FILES:
        src, dst = EXAMPLE_INPUTS_DIR / name, Path(target) / name
        if dst.exists() or dst.is_symlink():
            continue
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fin:
                try:
                    fout = open(dst, "xb")  # "x": fails instead of replacing a file made meanwhile
                except FileExistsError:
                    continue
                try:
                    with fout:
                        shutil.copyfileobj(fin, fout)
                except OSError:
                    dst.unlink(missing_ok=True)  # no half file that would stop the next try
                    raise
            copied.append(name)
        except OSError as e:
            log.warning("MagiHuman: could not copy the example input %s to %s (%s); the TI2V / A2V / Extend "
                        "templates will ask for a file", name, target, e)
    if copied:
        log.info("MagiHuman: copied the template example inputs %s into %s", ", ".join(copied), target)
    return copied
