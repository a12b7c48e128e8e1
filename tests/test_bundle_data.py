"""Data discovery, splitting, mask encodings, orientation and input errors of the bundle (issue 3, items 2 and 9)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bundle.data.datalists import (
    check_pairs,
    find_pairs,
    prepare_evaluation_datalist,
    prepare_inference_datalist,
    prepare_training_datalist,
    write_training_split,
    read_datalist,
    split_pairs,
)
from bundle.data.demo import draw_demo_pair, make_demo_dataset
from bundle.errors import BundleInputError, find_input_error
from bundle.data.image_files import image_stem, read_array, read_info
from bundle.data.transforms import LoadImage2Dd, PrepareMaskd, SavePredictionPNGd, binarize_mask

REPO = Path(__file__).resolve().parents[1]


def _asymmetric_pair(height: int = 37, width: int = 53):
    """An RGB image and its mask whose shapes have no symmetry: an L in the top-left, a bar at the bottom right."""
    mask = np.zeros((height, width), np.uint8)
    mask[3:20, 4:8] = 1
    mask[16:20, 4:18] = 1
    mask[height - 6 : height - 3, width - 20 : width - 2] = 1
    image = np.full((height, width, 3), 40, np.uint8)
    image[mask > 0] = (220, 180, 30)
    image[:, :, 2] = np.arange(width, dtype=np.uint8)[None, :] * 4  # a left-to-right ramp in blue
    return image, mask


def _write_dataset(root: Path, n: int = 5, size=(30, 44), image_ext=".png", mask_ext=".png", mask_scale=255) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image, mask = _asymmetric_pair(*size)
        Image.fromarray(image).save(root / "images" / f"case{i}{image_ext}")
        Image.fromarray((mask * mask_scale).astype(np.uint8)).save(root / "masks" / f"case{i}{mask_ext}")
    return root


# ---- pairing ---------------------------------------------------------------------------------


def test_pairs_by_stem_across_formats(tmp_path):
    root = _write_dataset(tmp_path / "d", n=3, image_ext=".jpg", mask_ext=".png")
    pairs = find_pairs(root)
    assert [Path(p["image"]).name for p in pairs] == ["case0.jpg", "case1.jpg", "case2.jpg"]
    assert [Path(p["label"]).name for p in pairs] == ["case0.png", "case1.png", "case2.png"]


def test_name_patterns_pair_drive_style_names(tmp_path):
    root = tmp_path / "drive_like"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for n in ("21", "22"):
        Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(root / "images" / f"{n}_training.tif")
        Image.fromarray(np.zeros((8, 9), np.uint8)).save(root / "masks" / f"{n}_manual1.gif")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(root / "images" / "01_test.tif")  # not matched: left out
    pairs = find_pairs(root, image_pattern="*_training", mask_pattern="*_manual1")
    assert [(Path(p["image"]).name, Path(p["label"]).name) for p in pairs] == [
        ("21_training.tif", "21_manual1.gif"),
        ("22_training.tif", "22_manual1.gif"),
    ]
    with pytest.raises(BundleInputError, match="exactly one"):
        find_pairs(root, image_pattern="*_*")


def test_datalist_paths_are_relative_to_its_folder(tmp_path):
    root = _write_dataset(tmp_path / "d", n=4)
    listing = {"training": [{"image": f"images/case{i}.png", "label": f"masks/case{i}.png"} for i in range(4)]}
    (root / "list.json").write_text(json.dumps(listing))
    lists = read_datalist(root / "list.json")
    assert lists["training"][0]["image"] == str(root / "images" / "case0.png")
    # no validation list: a seeded split is made and written next to the outputs
    out = prepare_training_datalist(tmp_path / "run", datalist=root / "list.json", val_fraction=0.25, test_fraction=0.0)
    assert len(out["training"]) == 3 and len(out["validation"]) == 1 and out["test"] == []
    assert not (tmp_path / "run" / "datalist.json").exists()  # written when training starts, after every check
    write_training_split(tmp_path / "run", out, datalist=root / "list.json")
    written = json.loads((tmp_path / "run" / "datalist.json").read_text())
    assert written["validation"] == out["validation"]
    assert written["source"] == {"dataset_dir": None, "datalist": str((root / "list.json").resolve())}


def test_split_is_seeded_reproducible_and_independent_of_order(tmp_path):
    pairs = [{"image": f"/x/{i:03d}.png", "label": f"/y/{i:03d}.png"} for i in range(50)]
    a = split_pairs(pairs, 0.1, 0.2, seed=3)
    b = split_pairs(list(reversed(pairs)), 0.1, 0.2, seed=3)
    assert a == b
    assert (len(a["training"]), len(a["validation"]), len(a["test"])) == (35, 5, 10)
    assert split_pairs(pairs, 0.1, 0.2, seed=4) != a
    every = [p["image"] for s in a.values() for p in s]
    assert sorted(every) == sorted(p["image"] for p in pairs)


def test_training_split_is_written_and_reused_on_resume(tmp_path):
    root = _write_dataset(tmp_path / "d", n=10)
    first = prepare_training_datalist(tmp_path / "run", dataset_dir=root, split_seed=1)
    split_file = write_training_split(tmp_path / "run", first, dataset_dir=root)
    before = split_file.read_bytes()
    # a resumed run keeps its own split even if the seed given now differs
    again = prepare_training_datalist(tmp_path / "run", dataset_dir=root, split_seed=2, resume=True)
    assert again == first and split_file.read_bytes() == before


# ---- masks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 255])
def test_binary_masks_in_any_encoding(tmp_path, scale):
    _, mask = _asymmetric_pair()
    assert np.array_equal(binarize_mask(mask * scale), mask > 0)


def test_jpeg_mask_noise_is_thresholded(tmp_path):
    _, mask = _asymmetric_pair(64, 80)
    Image.fromarray(mask * 255).convert("RGB").save(tmp_path / "m.jpg", quality=60)  # Kvasir's RGB JPEG masks
    noisy = read_array(tmp_path / "m.jpg", as_mask=True)[0]
    assert len(np.unique(noisy)) > 2
    agreement = (binarize_mask(noisy) == (mask > 0)).mean()
    assert agreement > 0.98


def test_palette_gif_mask_and_label_maps(tmp_path):
    labels = np.zeros((12, 15), np.uint8)
    labels[2:5, 3:9] = 1
    labels[7:11, 10:14] = 2
    im = Image.fromarray(labels, mode="L").convert("P")
    im.save(tmp_path / "labels.png")
    loaded = LoadImage2Dd("label", as_mask=True)({"label": str(tmp_path / "labels.png")})
    assert np.array_equal(loaded["label"][0].numpy(), labels)
    out = PrepareMaskd("label", out_channels=3)(loaded)
    assert np.array_equal(out["label"][0].numpy(), labels)
    with pytest.raises(BundleInputError, match="labels.png.*out_channels=2"):
        PrepareMaskd("label", out_channels=2)(loaded)


def test_grayscale_16bit_and_nifti_images(tmp_path):
    gray16 = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 50).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g.png")
    assert read_info(tmp_path / "g.png").channels == 1
    assert np.array_equal(read_array(tmp_path / "g.png")[0], gray16)
    rgb = np.random.RandomState(0).randint(0, 255, (20, 30, 3)).astype(np.uint8)
    nib.save(nib.Nifti1Image(rgb.astype(np.float32), np.eye(4)), str(tmp_path / "c.nii.gz"))
    info = read_info(tmp_path / "c.nii.gz")
    assert (info.height, info.width, info.channels) == (20, 30, 3)
    assert np.array_equal(read_array(tmp_path / "c.nii.gz"), np.moveaxis(rgb, -1, 0))


# ---- orientation -----------------------------------------------------------------------------


def test_overlay_and_mask_png_line_up_with_the_input(tmp_path):
    """Load an asymmetric, non-square image and mask as the configs do, write the mask as a
    prediction: the PNGs must equal the input's pixels, unflipped and untransposed."""
    image, mask = _asymmetric_pair(37, 53)
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(mask * 255).save(tmp_path / "img_mask_in.png")
    d = LoadImage2Dd("image")({"image": str(tmp_path / "img.png")})
    d = LoadImage2Dd("label", as_mask=True)({**d, "label": str(tmp_path / "img_mask_in.png")})
    d = PrepareMaskd("label")(d)
    assert tuple(d["image"].shape) == (3, 37, 53)
    assert np.array_equal(d["image"].numpy().transpose(1, 2, 0), image)
    d["pred"] = d["label"].float()
    SavePredictionPNGd("pred", output_dir=tmp_path / "out", label_key="label")(d)
    written = np.asarray(Image.open(tmp_path / "out" / "img_mask.png"))
    assert written.shape == (37, 53)
    assert np.array_equal(written > 0, mask > 0)
    overlay = np.asarray(Image.open(tmp_path / "out" / "img_overlay.png")).astype(int)
    assert overlay.shape == (37, 53, 3)
    yellow = (overlay[..., 0] > 150) & (overlay[..., 1] > 130) & (overlay[..., 2] < 110)  # the prediction's fill
    truth_outline = (overlay[..., 0] == 0) & (overlay[..., 2] == 255)
    inside = mask > 0
    assert (yellow | truth_outline)[inside].mean() > 0.95 and yellow[~inside].mean() < 0.02
    assert truth_outline.sum() > 0 and not truth_outline[~inside].any()
    # away from the mask the overlay is the (stretched) image itself: the blue ramp runs left to right
    assert overlay[30, 5, 2] < overlay[30, 40, 2]


def test_demo_data_is_deterministic_and_not_square(tmp_path):
    a_img, a_mask = draw_demo_pair(3)
    b_img, b_mask = draw_demo_pair(3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    root = make_demo_dataset(tmp_path / "demo", count=6)
    pairs = find_pairs(root)
    assert len(pairs) == 6
    sizes = {read_info(p["image"]).size for p in pairs}
    assert any(h != w for h, w in sizes) and len(sizes) > 1
    check_pairs(pairs, in_channels=3)


# ---- bad input: one clear error naming the file or setting -----------------------------------


def test_missing_dataset_dir(tmp_path):
    with pytest.raises(BundleInputError, match="does not exist"):
        find_pairs(tmp_path / "nowhere")
    (tmp_path / "only_images" / "images").mkdir(parents=True)
    with pytest.raises(BundleInputError, match="no masks/ folder"):
        find_pairs(tmp_path / "only_images")


def test_no_pairs(tmp_path):
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    (tmp_path / "d" / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(BundleInputError, match="no images"):
        find_pairs(tmp_path / "d")


def test_images_without_masks_are_listed(tmp_path):
    root = _write_dataset(tmp_path / "d", n=4)
    (root / "masks" / "case1.png").unlink()
    (root / "masks" / "case3.png").unlink()
    with pytest.raises(BundleInputError, match=r"2 of 4 images .* case1\.png, case3\.png"):
        find_pairs(root)


def test_unreadable_files_are_named(tmp_path):
    root = _write_dataset(tmp_path / "d", n=3)
    (root / "images" / "case2.png").write_bytes(b"this is not a png")
    with pytest.raises(BundleInputError, match=r"cannot be read.*case2\.png"):
        check_pairs(find_pairs(root))


def test_size_mismatch_is_named(tmp_path):
    root = _write_dataset(tmp_path / "d", n=3)
    Image.fromarray(np.zeros((31, 44), np.uint8)).save(root / "masks" / "case1.png")
    with pytest.raises(BundleInputError, match=r"differ in size.*case1\.png 30x44 vs case1\.png 31x44"):
        check_pairs(find_pairs(root))


def test_wrong_channel_count_for_the_network(tmp_path):
    root = _write_dataset(tmp_path / "d", n=2)
    with pytest.raises(BundleInputError, match=r"in_channels=1.*case0\.png \(3 channels\).*--in_channels"):
        check_pairs(find_pairs(root), in_channels=1)


def test_evaluation_needs_labelled_split(tmp_path):
    root = _write_dataset(tmp_path / "d", n=2)
    (root / "list.json").write_text(
        json.dumps({"training": [{"image": "images/case0.png", "label": "masks/case0.png"}]})
    )
    with pytest.raises(BundleInputError, match="no 'test' entries"):
        prepare_evaluation_datalist(datalist=root / "list.json", split="test")
    assert len(prepare_evaluation_datalist(datalist=root / "list.json", split="training")) == 1


def test_inference_skips_unreadable_files_by_name(tmp_path, caplog):
    root = _write_dataset(tmp_path / "d", n=2)
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "images" / "gray.png")  # 1 channel for an RGB model
    with caplog.at_level("WARNING"):
        items = prepare_inference_datalist(root / "images", in_channels=3)
    assert [i["name"] for i in items] == ["case0", "case1"]
    assert "broken.jpg" in caplog.text and "gray.png" in caplog.text
    with pytest.raises(BundleInputError, match="does not exist"):
        prepare_inference_datalist(tmp_path / "missing")


def test_wrapped_input_errors_are_found():
    try:
        try:
            raise BundleInputError("the real cause")
        except BundleInputError as e:
            raise RuntimeError("Failed to instantiate ...") from e
    except RuntimeError as wrapped:
        assert str(find_input_error(wrapped)) == "the real cause"


def _run_bundle(args, cwd, timeout=300):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("case", ["missing-dir", "image-without-mask", "mask-values-vs-out-channels"])
def test_command_line_reports_bad_input_in_one_line(tmp_path, case):
    """The user's command prints one ERROR line (no traceback), exits non-zero and overwrites nothing."""
    root = tmp_path / "data"
    args = []
    if case == "missing-dir":
        expected = r"dataset_dir .*does not exist"
    elif case == "image-without-mask":
        _write_dataset(root, n=3)
        (root / "masks" / "case1.png").unlink()
        expected = r"have no mask .*case1\.png"
    else:  # found while loading (inside MONAI's transform and dataset wrappers)
        _write_dataset(root, n=3)
        args = ["--out_channels", "2"]
        expected = r"mask .*case\d\.png has values \[0, 255\] but out_channels=2"
    saved = tmp_path / "b" / "models" / "model.pt"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"an earlier model")
    result = _run_bundle(
        ["training", "--config_file", str(REPO / "configs" / "train.yaml"), "--bundle_root", str(tmp_path / "b"),
         "--dataset_dir", str(root), *args],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert re.search(expected, errors[0]), errors[0]
    assert saved.read_bytes() == b"an earlier model"
    assert not (saved.parent / "checkpoint.pt").exists()


def test_onnx_inference_without_an_onnx_model_is_one_error_naming_the_file(tmp_path):
    """configs/inference_onnx.yaml over inference.yaml, in a run folder with no models/model.onnx."""
    pytest.importorskip("onnxruntime")
    _write_dataset(tmp_path / "data", n=1)
    configs = "['configs/inference.yaml','configs/inference_onnx.yaml']"
    result = _run_bundle(
        ["--config_file", configs, "--bundle_root", str(tmp_path / "run"), "--inputs", str(tmp_path / "data" / "images"),
         "--output_dir", str(tmp_path / "out")],
        cwd=REPO,
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and f"no ONNX model at {tmp_path / 'run' / 'models' / 'model.onnx'}" in errors[0], errors
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---- real data (skipped where ../shared/data is absent) ----------------------------------------


def test_kvasir_pairs_sizes_and_masks(kvasir_dir):
    pairs = find_pairs(kvasir_dir)
    assert len(pairs) == 1000
    check_pairs(pairs[:50], in_channels=3)
    lists = read_datalist(kvasir_dir / "datalist_800_100_100.json")
    assert [len(lists[s]) for s in ("training", "validation", "test")] == [800, 100, 100]
    d = LoadImage2Dd("label", as_mask=True)({"label": pairs[0]["label"]})
    d = PrepareMaskd("label")(d)
    assert set(np.unique(d["label"].numpy())) == {0, 1}
    info = read_info(pairs[0]["image"])
    assert tuple(d["label"].shape[1:]) == info.size


def test_drive_pairs_with_name_patterns(drive_dir):
    pairs = find_pairs(drive_dir, image_pattern="*_training", mask_pattern="*_manual1")
    assert len(pairs) == 20 and Path(pairs[0]["image"]).name == "21_training.tif"
    assert Path(pairs[0]["label"]).name == "21_manual1.gif"
    infos = check_pairs(pairs, in_channels=3)
    assert {i.size for i in infos.values()} == {(584, 565)}
    mask = PrepareMaskd("label")(LoadImage2Dd("label", as_mask=True)({"label": pairs[0]["label"]}))["label"]
    assert set(np.unique(mask.numpy())) == {0, 1} and tuple(mask.shape) == (1, 584, 565)
    # both patterns together pair training and test images ('*_*' would be ambiguous, so use the two sets)
    everything = find_pairs(drive_dir, image_pattern="*_test", mask_pattern="*_manual1")
    assert len(everything) == 20


def test_image_stem_drops_the_image_suffix_only():
    assert image_stem("/data/images/case.1.nii.gz") == "case.1"  # .nii.gz is one suffix; dots in the name stay
    assert image_stem("21_training.TIF") == "21_training"
    assert image_stem("notes.v2.txt") == "notes.v2"  # not an image suffix: the last suffix only
