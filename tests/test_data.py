"""Splits by well and by file, and reproducible patch pairs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from msrgan_core.config import DegradationConfig
from msrgan_core.data import RealPair, sample_batch, split_files, validation_pairs
from msrgan_core.binning import bin_mean

WELL_REGEX = r"_(?P<well>[A-P][0-9]{2})_s"


def plate_names(wells=("A01", "A02", "B03", "C04", "D05", "E06", "F07", "G08", "H09", "H10"), sites=3):
    return [Path(f"IXMtest_{w}_s{s}_w1ABC.tif") for w in wells for s in range(1, sites + 1)]


def test_split_by_well_keeps_every_well_on_one_side():
    split = split_files(plate_names(), WELL_REGEX, 0.3, seed=1)
    assert split.by == "well"
    train_wells = {p.name.split("_")[1] for p in split.train}
    val_wells = {p.name.split("_")[1] for p in split.val}
    assert not train_wells & val_wells
    assert len(val_wells) == 3 and len(split.val) == 9
    assert sorted(split.val_groups) == sorted(f"well {w}" for w in val_wells)


def test_split_is_reproducible_from_the_seed_and_changes_with_it():
    a = split_files(plate_names(), WELL_REGEX, 0.3, seed=1)
    b = split_files(list(reversed(plate_names())), WELL_REGEX, 0.3, seed=1)
    c = split_files(plate_names(), WELL_REGEX, 0.3, seed=2)
    assert a.val == b.val
    assert any(a.val != split_files(plate_names(), WELL_REGEX, 0.3, seed=s).val for s in range(2, 6))
    assert c.by == "well"


def test_files_without_a_well_are_split_by_file_beside_a_plate():
    loose = [Path(f"{i:04x}.png") for i in range(10)]
    split = split_files(plate_names() + loose, WELL_REGEX, 0.2, seed=0)
    assert split.by == "well and file"
    assert sum(p.suffix == ".png" for p in split.val) == 2
    assert len({p.name.split("_")[1] for p in split.val if p.suffix == ".tif"}) == 2


def test_a_plate_saved_one_folder_per_well_is_split_by_well(caplog):
    files = [Path("plate") / well / f"f{site}.tif" for well in ("A01", "A02", "B01", "B02", "C01") for site in range(3)]
    split = split_files(files, r"^(?P<well>[A-P]\d\d)$", 0.2, seed=0)
    assert split.by == "well" and split.val_groups == [f"well {split.val[0].parent.name}"] and len(split.val) == 3
    with caplog.at_level("WARNING", logger="msrgan"):
        split = split_files(files, r"_(?P<well>[A-P]\d\d)_s", 0.2, seed=0)  # a regex for names like IXM's
    assert split.by == "file" and "names the well of none of the 15 files" in caplog.text


def test_no_regex_splits_by_file_and_always_leaves_training_data():
    files = [Path(f"img{i}.tif") for i in range(3)]
    split = split_files(files, None, 0.9, seed=0)
    assert split.by == "file" and len(split.train) == 1 and len(split.val) == 2


def test_sample_batch_pairs_are_binned_views_of_each_other_and_reproducible():
    rng = np.random.default_rng(0)
    images = [rng.random((1, 64, 80)).astype(np.float32) for _ in range(3)]
    config = DegradationConfig.acquisition(method="bin", scale=4)
    lr, hr = sample_batch(images, 5, 32, config, np.random.default_rng([7, 3]))
    assert lr.shape == (5, 1, 8, 8) and hr.shape == (5, 1, 32, 32)
    np.testing.assert_allclose(lr, np.stack([bin_mean(h, 4) for h in hr]), atol=1e-6)
    lr2, hr2 = sample_batch(images, 5, 32, config, np.random.default_rng([7, 3]))
    np.testing.assert_array_equal(hr, hr2)
    _, hr3 = sample_batch(images, 5, 32, config, np.random.default_rng([7, 4]))
    assert not np.array_equal(hr, hr3)


def test_validation_pairs_are_fixed_central_crops():
    rng = np.random.default_rng(0)
    images = [rng.random((1, 300, 302)).astype(np.float32)]
    (lr, hr), = validation_pairs(images, DegradationConfig(scale=4), seed=0, crop=256)
    assert hr.shape == (1, 256, 256) and lr.shape == (1, 64, 64)
    np.testing.assert_array_equal(hr, images[0][:, 22:278, 23:279])


def test_images_are_picked_in_proportion_to_their_area():
    small = np.zeros((1, 32, 32), np.float32)
    large = np.ones((1, 96, 96), np.float32)  # 9 times the area
    _, hr = sample_batch([small, large], 2000, 16, DegradationConfig(scale=4), np.random.default_rng(0))
    share_large = float(np.mean(hr.mean(axis=(1, 2, 3)) == 1.0))
    assert abs(share_large - 0.9) < 0.03


def test_real_pairs_are_cut_at_the_same_place_in_both_images():
    """A patch of a real pair is the same area, turned and mirrored alike, on the low-resolution grid:
    for a pair that is an exact binning, every low-resolution patch is its high-resolution patch binned."""
    rng = np.random.default_rng(0)
    pairs = []
    for shape in [(1, 96, 132), (1, 160, 100)]:
        hr = rng.random(shape).astype(np.float32)
        pairs.append(RealPair(lr=bin_mean(hr, 4), hr=hr))
    lr, hr = sample_batch(pairs, 16, 32, DegradationConfig(), np.random.default_rng(1))
    assert lr.shape == (16, 1, 8, 8) and hr.shape == (16, 1, 32, 32)
    np.testing.assert_allclose(np.stack([bin_mean(h, 4) for h in hr]), lr, atol=1e-6)
    for lr, hr in validation_pairs(pairs, DegradationConfig(), seed=0, crop=50):
        assert hr.shape[1:] == (48, 48)
        np.testing.assert_allclose(bin_mean(hr, 4), lr, atol=1e-6)


def test_images_too_small_for_their_role_say_what_to_change(tmp_path):
    from msrgan_core.config import NormalizationConfig
    from msrgan_core.data import DataError, load_images

    tifffile.imwrite(tmp_path / "small.tif", np.arange(28 * 28, dtype=np.uint16).reshape(28, 28))
    for role, advice in [("training", "smaller train.patch_size"), ("validation", "add larger images")]:
        with pytest.raises(DataError, match=f"no usable {role} images among 1: .* 32 x 32 pixels; .*{advice}"):
            load_images([tmp_path / "small.tif"], NormalizationConfig(), 1, 32, role=role)


def test_a_training_pair_of_two_fields_is_left_out_not_learned(tmp_path, caplog):
    from helpers import smooth_image

    from msrgan_core.config import NormalizationConfig
    from msrgan_core.data import load_pairs

    for i, (mine, other) in enumerate([(0, 0), (1, 2)]):  # the second pair's low-resolution file is another field
        tifffile.imwrite(tmp_path / f"hr{i}.tif", smooth_image((160, 176), seed=mine, low=100, high=3000, noise=0.02).astype(np.uint16))
        lr = bin_mean(smooth_image((160, 176), seed=other, low=100, high=3000, noise=0.02)[None], 4)[0]
        tifffile.imwrite(tmp_path / f"lr{i}.tif", lr.astype(np.uint16))
    with caplog.at_level("WARNING", logger="msrgan"):
        pairs = load_pairs([(tmp_path / f"lr{i}.tif", tmp_path / f"hr{i}.tif") for i in range(2)], NormalizationConfig(),
                           1, 4, 32)
    assert len(pairs) == 1 and "left out lr1.tif / hr1.tif" in caplog.text


def test_a_split_of_one_well_trains_on_it_and_says_nothing_is_held_out(caplog):
    """A plate of one well with val_fraction 0.6 had put every file in validation, and the run then
    blamed the images' size."""
    import logging

    from msrgan_core.data import split_files

    fields = [Path(f"plate_A01_s{i}.tif") for i in (1, 2)]
    with caplog.at_level(logging.WARNING, logger="msrgan"):
        split = split_files(fields, r"_(?P<well>[A-P][0-9]{2})_s", 0.6, 0)
    assert split.train == fields and not split.val and "nothing is held out for validation" in caplog.text
    mixed = split_files(fields + [Path("loose.tif")], r"_(?P<well>[A-P][0-9]{2})_s", 0.6, 0)
    assert mixed.train and mixed.val  # one well and one file: one of them trains
