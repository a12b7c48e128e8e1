"""The analysis scripts of scripts/ that the docs quote figures from."""

import numpy as np
import pytest
from helpers import load_script
from PIL import Image


def _two_vessels() -> np.ndarray:
    """A 64 x 64 mask: a vessel 2 px wide (rows 10-11) and one 8 px wide (rows 40-47), both 40 px long."""
    mask = np.zeros((64, 64), bool)
    mask[10:12, 12:52] = True
    mask[40:48, 12:52] = True
    return mask


def test_vessel_width_gives_each_vessel_its_width():
    width = load_script("vessel_recall_by_width").vessel_width(_two_vessels())
    assert width[0, 0] == 0 and width[25, 30] == 0  # background
    assert 1 <= width[10, 30] <= 3 and width[11, 30] == width[10, 30]  # the thin vessel, both rows
    assert 7 <= width[40, 30] <= 9 and width[47, 30] == width[44, 30]  # the wide one, edge and middle alike


def test_vessel_recall_script_counts_thin_and_wide_vessels(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(data / "images" / "01_test.png")
    Image.fromarray(_two_vessels().astype(np.uint8) * 255).save(data / "masks" / "01_manual1.png")
    found = np.zeros((64, 64), bool)
    found[10:12, 12:32] = True  # half of the thin vessel
    found[40:48, 12:52] = True  # all of the wide one
    found[0:4, 0:10] = True  # 40 false-positive pixels
    (tmp_path / "eval" / "predictions").mkdir(parents=True)
    Image.fromarray(found.astype(np.uint8) * 255).save(tmp_path / "eval" / "predictions" / "01_test_mask.png")

    main = load_script("vessel_recall_by_width").main
    args = ["--dataset_dir", str(data), "--image_pattern", "*_test", "--mask_pattern", "*_manual1"]
    main(args + [str(tmp_path / "eval")])
    printed = capsys.readouterr().out
    # 80 thin pixels of 400 (20%), 40 of them found; 320 wide ones, all found; 40 false positives / 400
    assert "recall on vessels <= 3 px 0.500 (20% of vessel pixels), wider 1.000" in printed
    assert "false positives 0.100 of the vessel pixels (1 images)" in printed
    with pytest.raises(SystemExit, match="01_test_mask.png is missing"):
        main(args + [str(tmp_path / "elsewhere")])


def test_overlay_grid_finds_overlays_of_names_with_dots(tmp_path):
    eval_dir = tmp_path / "eval"
    (eval_dir / "predictions").mkdir(parents=True)
    rows = ["filename,class0,mean"]
    for i, name in enumerate(["case.1", "case.2", "case3"]):
        rows.append(f"/data/images/{name}.nii.gz,{0.5 + i / 10},{0.5 + i / 10}")
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(eval_dir / "predictions" / f"{name}_overlay.png")
    (eval_dir / "mean_dice_raw.csv").write_text("\n".join(rows) + "\n")
    script = load_script("overlay_grid")
    assert script.per_image_dice(eval_dir) == pytest.approx({"case.1": 0.5, "case.2": 0.6, "case3": 0.7})
    script.main([str(eval_dir), str(tmp_path / "grid.png")])
    assert Image.open(tmp_path / "grid.png").size[0] > 0
