# Copyright (c) DS-TransUNet MONAI bundle developers
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Finding, checking and splitting the data the configs train, evaluate and infer on.

The configs call these by ``_target_``. Everything here fails with a :class:`BundleInputError` whose
message names the setting or the files at fault; nothing reads pixels it does not have to
(pairing and size/channel checks read file headers only).

A datalist is MONAI's form: ``{"training": [{"image": ..., "label": ...}, ...], "validation": [...],
"test": [...]}``, relative paths taken from the datalist file's folder.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

from bundle.data.demo import DEMO_NOTICE, make_demo_dataset
from bundle.data.image_files import IMAGE_SUFFIXES, ImageInfo, image_stem, read_array, read_info, split_name
from bundle.errors import BundleInputError, flag
from bundle.files import write_json_atomically

__all__ = [
    "SPLITS",
    "find_pairs",
    "read_datalist",
    "split_pairs",
    "check_pairs",
    "prepare_training_datalist",
    "write_training_split",
    "prepare_evaluation_datalist",
    "prepare_inference_datalist",
]

PathLike = Union[str, Path]
Pair = Dict[str, str]
SPLITS: Tuple[str, ...] = ("training", "validation", "test")
SPLIT_FILE = "datalist.json"
_MAX_NAMED = 8  # file names quoted in one error line before "and N more"

logger = logging.getLogger(__name__)


def _main_process() -> bool:
    """False on the non-zero ranks of a torch.distributed run (they keep quiet)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _info(message: str, *args: Any) -> None:
    if _main_process():
        logger.info(message, *args)


def _warning(message: str, *args: Any) -> None:
    if _main_process():
        logger.warning(message, *args)


def _names(items: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:_MAX_NAMED])
    return shown + (f" and {len(items) - _MAX_NAMED} more" if len(items) > _MAX_NAMED else "")


def _pattern_regex(pattern: str, setting: str) -> Tuple["re.Pattern[str]", bool]:
    """Regex for a one-``*`` name pattern (``*`` is the shared part of image and mask names) and
    whether it matches whole file names (it ends in an image suffix) or stems."""
    if not isinstance(pattern, str) or pattern.count("*") != 1:
        raise BundleInputError(
            f"{setting}={pattern!r}: a name pattern needs exactly one '*' standing for the part image and mask "
            "names share, e.g. --image_pattern '*_training' --mask_pattern '*_manual1'."
        )
    head, tail = pattern.split("*")
    whole_name = split_name(pattern) is not None and tail != ""
    return re.compile(re.escape(head) + "(?P<key>.+)" + re.escape(tail) + "$"), whole_name


def _index_folder(folder: Path, pattern: str, setting: str) -> Tuple[Dict[str, Path], List[str]]:
    """Map each pattern key to its file in ``folder``; also return the image files the pattern skips."""
    regex, whole_name = _pattern_regex(pattern, setting)
    found: Dict[str, Path] = {}
    skipped: List[str] = []
    clashes: List[str] = []
    for path in sorted(folder.iterdir()):
        parts = split_name(path)
        if parts is None or not path.is_file() or path.name.startswith("."):
            continue
        match = regex.match(path.name if whole_name else parts[0])
        if match is None:
            skipped.append(path.name)
            continue
        key = match.group("key")
        if key in found:
            clashes.append(f"{found[key].name} / {path.name}")
            continue
        found[key] = path
    if clashes:
        raise BundleInputError(
            f"{folder}: several files share a name ({setting}={pattern!r}), so pairing is ambiguous: {_names(clashes)}"
        )
    return found, skipped


def find_pairs(
    dataset_dir: PathLike,
    image_pattern: str = "*",
    mask_pattern: str = "*",
    images_subdir: str = "images",
    masks_subdir: str = "masks",
) -> List[Pair]:
    """Pair ``DIR/images/*`` with ``DIR/masks/*`` by name, sorted by image name.

    By default an image and its mask share a stem (``a.jpg`` and ``a.png`` pair). Name patterns
    with one ``*`` pair other names: ``image_pattern="*_training"``, ``mask_pattern="*_manual1"``
    pairs DRIVE's ``21_training.tif`` with ``21_manual1.gif``. Image files the pattern does not
    match are left out (and counted in the log); masks without an image are ignored.

    Raises:
        BundleInputError: missing folders, no images, images without masks (named), no pairs.
    """
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise BundleInputError(f"dataset_dir {str(root)!r} does not exist or is not a folder.")
    image_dir, mask_dir = root / images_subdir, root / masks_subdir
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise BundleInputError(
                f"dataset_dir {str(root)!r} has no {folder.name}/ folder: it needs {images_subdir}/ and "
                f"{masks_subdir}/ side by side (or give --datalist FILE)."
            )
    images, skipped = _index_folder(image_dir, image_pattern, "image_pattern")
    if not images:
        what = f"matching image_pattern {image_pattern!r} " if skipped else ""
        raise BundleInputError(
            f"no images {what}in {image_dir} (looked for {', '.join(IMAGE_SUFFIXES)}); no image/mask pairs to use."
        )
    masks, _ = _index_folder(mask_dir, mask_pattern, "mask_pattern")
    missing = sorted(images[k].name for k in images if k not in masks)
    if missing:
        raise BundleInputError(
            f"{len(missing)} of {len(images)} images in {image_dir} have no mask in {mask_dir} "
            f"(mask_pattern {mask_pattern!r}): {_names(missing)}"
        )
    if skipped:
        _info("%d files in %s do not match image_pattern %r and are left out.", len(skipped), image_dir, image_pattern)
    return [{"image": str(images[k]), "label": str(masks[k])} for k in sorted(images, key=lambda k: images[k].name)]


def read_datalist(datalist: PathLike) -> Dict[str, List[Pair]]:
    """Read a MONAI datalist JSON; relative paths are taken from its folder.

    Raises:
        BundleInputError: missing or malformed file, entries without ``image``, missing files (named).
    """
    path = Path(datalist).expanduser()
    if not path.is_file():
        raise BundleInputError(f"datalist {str(path)!r} does not exist.")
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleInputError(f"datalist {path} is not readable JSON: {e}") from e
    if not isinstance(content, dict) or not any(isinstance(content.get(s), list) for s in SPLITS):
        raise BundleInputError(
            f"datalist {path} has none of the lists {', '.join(SPLITS)} (each a list of {{'image', 'label'}})."
        )
    base = path.parent
    out: Dict[str, List[Pair]] = {}
    missing: List[str] = []
    for split in SPLITS:
        entries = content.get(split)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise BundleInputError(f"datalist {path}: '{split}' must be a list of {{'image', 'label'}}.")
        items = []
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                entry = {"image": entry}
            if not isinstance(entry, dict) or "image" not in entry:
                raise BundleInputError(f"datalist {path}: {split}[{i}] has no 'image': {entry!r}")
            item = {k: str(base / v) for k, v in entry.items() if k in ("image", "label") and isinstance(v, str)}
            missing += [item[k] for k in ("image", "label") if k in item and not Path(item[k]).is_file()]
            items.append(item)
        out[split] = items
    if missing:
        raise BundleInputError(f"datalist {path} names {len(missing)} files that do not exist: {_names(missing)}")
    return out


def split_pairs(
    pairs: Sequence[Pair], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> Dict[str, List[Pair]]:
    """Seeded, reproducible train/validation/test split (independent of file system order).

    At least one pair goes to validation, and to test when ``test_fraction > 0`` and there are
    three or more pairs.
    """
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise BundleInputError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be fractions summing to less than 1 "
            "(val_fraction above 0)."
        )
    ordered = sorted(pairs, key=lambda p: (p["image"], p.get("label", "")))
    n = len(ordered)
    if n < 2:
        raise BundleInputError(f"only {n} image/mask pair found: at least 2 are needed to train and validate.")
    random.Random(seed).shuffle(ordered)
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n >= 3 else 0
    n_test = min(n_test, n - n_val - 1)
    return {
        "validation": ordered[:n_val],
        "test": ordered[n_val : n_val + n_test],
        "training": ordered[n_val + n_test :],
    }


def check_pairs(pairs: Iterable[Pair], in_channels: int | None = None) -> Dict[str, ImageInfo]:
    """Check from file headers that every image and mask can be read, that each mask has its
    image's size, and that images have ``in_channels`` channels. Returns image path -> info.

    Raises:
        BundleInputError: one line naming the unreadable files, or the mismatched pairs.
    """
    pairs = list(pairs)
    unreadable: List[str] = []
    infos: Dict[str, ImageInfo] = {}
    mask_infos: Dict[str, ImageInfo] = {}
    for pair in pairs:
        for key, store, as_mask in (("image", infos, False), ("label", mask_infos, True)):
            if key not in pair:
                continue
            try:
                store[pair[key]] = read_info(pair[key], as_mask=as_mask)
            except BundleInputError as e:
                unreadable.append(f"{pair[key]} ({str(e).split(': ', 1)[-1]})")
    if unreadable:
        raise BundleInputError(f"{len(unreadable)} files cannot be read as images: {_names(unreadable)}")
    mismatched = [
        f"{Path(p['image']).name} {_hw(infos[p['image']])} vs {Path(p['label']).name} {_hw(mask_infos[p['label']])}"
        for p in pairs
        if "label" in p and infos[p["image"]].size != mask_infos[p["label"]].size
    ]
    if mismatched:
        raise BundleInputError(
            f"{len(mismatched)} masks differ in size from their images (height x width): {_names(mismatched)}"
        )
    if in_channels is not None:
        wrong = sorted(
            f"{Path(p)} ({info.channels} channels)" for p, info in infos.items() if info.channels != in_channels
        )
        if wrong:
            raise BundleInputError(
                f"{len(wrong)} images do not have the network's in_channels={in_channels}: {_names(wrong)}. "
                f"Set --in_channels to the images' channel count (1 for grayscale, 3 for RGB)."
            )
    return infos


def _hw(info: ImageInfo) -> str:
    return f"{info.height}x{info.width}"


def prepare_training_datalist(
    output_dir: PathLike,
    dataset_dir: PathLike | None = None,
    datalist: PathLike | None = None,
    in_channels: int = 3,
    image_pattern: str = "*",
    mask_pattern: str = "*",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    resume: bool = False,
    demo_dir: PathLike | None = None,
    demo_count: int = 40,
) -> Dict[str, List[Pair]]:
    """The training/validation/test lists for a training run, checked. Nothing is written here: the
    split goes to ``output_dir/datalist.json`` (for evaluation and resuming) when training starts
    (:func:`write_training_split`), so a run that fails its checks leaves the previous run's split.

    Sources, first that applies: on ``resume``, the run's own ``datalist.json``; ``datalist``
    (a MONAI datalist; split seeded when it has no ``validation`` list); ``dataset_dir`` (pairs
    found by :func:`find_pairs`, split seeded); neither: ``demo_count`` generated demo pairs in
    ``demo_dir`` (see :mod:`bundle.data.demo`).
    """
    output_dir = Path(output_dir)
    split_file = output_dir / SPLIT_FILE
    resume = flag("resume", resume)
    if dataset_dir and datalist:
        raise BundleInputError("give either --dataset_dir or --datalist, not both.")
    if resume and split_file.is_file():
        _check_resumed_source(split_file, dataset_dir, datalist)
        _info("Resuming: using this run's split %s.", split_file)
        lists = read_datalist(split_file)
        if not (dataset_dir or datalist) and demo_dir is not None:
            _warning(DEMO_NOTICE, demo_dir)
    elif datalist:
        lists = read_datalist(datalist)
        if not lists.get("training"):
            raise BundleInputError(f"datalist {datalist} has no 'training' entries.")
        missing_label = [p["image"] for s in SPLITS for p in lists.get(s, []) if "label" not in p]
        if missing_label:
            raise BundleInputError(f"datalist {datalist}: entries without 'label' (mask): {_names(missing_label)}")
        if not lists.get("validation"):
            given_test = lists.get("test") or []
            if given_test:  # keep the given test list; split training into training and validation
                lists = split_pairs(lists["training"], val_fraction, 0.0, split_seed)
                lists["test"] = given_test
            else:
                lists = split_pairs(lists["training"], val_fraction, test_fraction, split_seed)
            _info("Datalist %s has no validation list: made a seeded split (seed %d).", datalist, split_seed)
        lists.setdefault("test", [])
    else:
        if dataset_dir:
            pairs = find_pairs(dataset_dir, image_pattern, mask_pattern)
            source = str(Path(dataset_dir).expanduser().resolve())
        else:
            if demo_dir is None:
                raise BundleInputError(
                    "no --dataset_dir or --datalist given, and no demo_dir to generate demo data in."
                )
            demo = make_demo_dataset(demo_dir, count=demo_count)
            _warning(DEMO_NOTICE, demo)
            pairs = find_pairs(demo)
            source = str(Path(demo).resolve())
        lists = split_pairs(pairs, val_fraction, test_fraction, split_seed)
        _info(
            "Split %d pairs from %s with seed %d: %d training, %d validation, %d test.",
            len(pairs),
            source,
            split_seed,
            *(len(lists[s]) for s in SPLITS),
        )
    if not lists.get("validation"):
        raise BundleInputError("the validation list is empty: give a datalist with 'validation' entries or more data.")
    check_pairs([p for s in SPLITS for p in lists.get(s, [])], in_channels)
    return {s: list(lists.get(s, [])) for s in SPLITS}


def _data_source(dataset_dir: PathLike | None, datalist: PathLike | None) -> Dict[str, str | None]:
    resolved = lambda p: str(Path(p).expanduser().resolve()) if p else None  # noqa: E731
    return {"dataset_dir": resolved(dataset_dir), "datalist": resolved(datalist)}


def _check_resumed_source(split_file: Path, dataset_dir: PathLike | None, datalist: PathLike | None) -> None:
    """A resumed run trains on its own split: given data that differ from the run's are an error."""
    if not (dataset_dir or datalist):
        return
    try:
        recorded = json.loads(split_file.read_text()).get("source")
    except (OSError, ValueError) as e:
        raise BundleInputError(f"cannot read the run's split {split_file}: {e}") from e
    if not recorded:
        return  # written before the source was recorded
    given = _data_source(dataset_dir, datalist)
    if given != recorded:
        was = ", ".join(f"--{k} {v}" for k, v in recorded.items() if v) or "demo data"
        now = ", ".join(f"--{k} {v}" for k, v in given.items() if v)
        raise BundleInputError(
            f"--resume true: the run being resumed ({split_file}) was trained on {was}, but this command gives {now}; "
            "resume with the run's own data (or leave the data out), or start a new run in another --bundle_root."
        )


def write_training_split(
    output_dir: PathLike,
    lists: Mapping[str, Sequence[Pair]],
    dataset_dir: PathLike | None = None,
    datalist: PathLike | None = None,
) -> Path:
    """Write the split a training run uses to ``output_dir/datalist.json`` (absolute paths, and where the
    data came from, which a resumed run checks). Called when training starts, after every check."""
    split_file = Path(output_dir) / SPLIT_FILE
    absolute = {s: [{k: str(Path(v).resolve()) for k, v in p.items()} for p in lists.get(s, [])] for s in SPLITS}
    content = {
        "description": "the split this training run uses (written by bundle.data.datalists)",
        "source": _data_source(dataset_dir, datalist),
        **absolute,
    }
    write_json_atomically(split_file, content)
    _info("Wrote the split to %s.", split_file)
    return split_file


def prepare_evaluation_datalist(
    dataset_dir: PathLike | None = None,
    datalist: PathLike | None = None,
    split: str = "test",
    in_channels: int = 3,
    image_pattern: str = "*",
    mask_pattern: str = "*",
) -> List[Pair]:
    """Image/mask pairs to evaluate: every pair in ``dataset_dir``, or the ``split`` list of ``datalist``
    (by default the training run's own ``datalist.json``), checked like training data."""
    if dataset_dir:
        pairs = find_pairs(dataset_dir, image_pattern, mask_pattern)
        source = f"{dataset_dir}"
    elif datalist:
        if split not in SPLITS:
            raise BundleInputError(f"split={split!r}: choose one of {', '.join(SPLITS)}.")
        lists = read_datalist(datalist)
        pairs = lists.get(split) or []
        if not pairs:
            raise BundleInputError(f"datalist {datalist} has no '{split}' entries to evaluate (choose --split).")
        unlabelled = [p["image"] for p in pairs if "label" not in p]
        if unlabelled:
            raise BundleInputError(f"datalist {datalist}: '{split}' entries without 'label': {_names(unlabelled)}")
        source = f"{datalist} ({split})"
    else:
        raise BundleInputError("nothing to evaluate: give --dataset_dir DIR or --datalist FILE.")
    check_pairs(pairs, in_channels)
    _info("Evaluating %d pairs from %s.", len(pairs), source)
    return pairs


def prepare_inference_datalist(inputs: PathLike | Sequence[PathLike], in_channels: int = 3) -> List[Dict[str, str]]:
    """Images to run inference on: a folder (its image files), one file, or a list of files/folders.

    Each item gets a ``name`` (the stem, made unique) for its output files. Files that cannot be
    read, or have the wrong channel count, are reported by name in the log and left out; the rest
    run.

    Raises:
        BundleInputError: an input that does not exist, or no readable image at all.
    """
    if inputs is None or inputs == "" or inputs == []:
        raise BundleInputError("nothing to infer on: give --inputs with a folder, an image file, or a list of them.")
    files: List[Path] = []
    entries = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    failed: List[str] = []
    missing = 0
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and split_name(p) and not p.name.startswith("."))
            if not found and len(entries) == 1:
                raise BundleInputError(
                    f"no image files in the inference folder {path} (PNG, JPEG, TIFF, BMP, GIF, NIfTI)."
                )
            files += found
        elif path.is_file():
            files.append(path)
        elif len(entries) == 1:
            raise BundleInputError(f"inference input {str(path)!r} does not exist.")
        else:  # one missing entry of a list: skipped like an unreadable file, the rest run
            logger.warning("Inference input %s does not exist, skipped.", path)
            failed.append(path.name)
            missing += 1
    items: List[Dict[str, str]] = []
    used: Dict[str, int] = {}
    for path in files:
        try:
            shape = read_array(path).shape  # decode fully: a truncated file fails here, not mid-run
        except BundleInputError as e:
            logger.warning("Cannot read %s, skipped: %s", path, str(e).split(": ", 1)[-1])
            failed.append(path.name)
            continue
        if shape[0] != in_channels:
            logger.warning("Skipped %s: %d channels, the network takes in_channels=%d.", path, shape[0], in_channels)
            failed.append(path.name)
            continue
        stem = image_stem(path)
        used[stem] = used.get(stem, 0) + 1
        name = stem if used[stem] == 1 else f"{stem}-{used[stem]}"
        items.append({"image": str(path), "name": name})
    if failed:
        logger.warning("%d of %d inputs were skipped: %s", len(failed), len(files) + missing, _names(failed))
    if not items:
        shown = _names([str(f) for f in files] or [str(e) for e in entries])
        raise BundleInputError(f"no readable image among the {len(files) + missing} inference inputs ({shown}).")
    logger.info("Running inference on %d images.", len(items))
    return items
