"""Configuration: validated dataclasses whose errors quote the bad value; TOML files with unknown keys rejected."""
from __future__ import annotations

import json
import textwrap

import pytest

from msrgan_core.config import (
    ConfigError, DataConfig, DegradationConfig, DiscriminatorConfig, ExperimentConfig, GeneratorConfig, LossConfig,
    NormalizationConfig, TrainConfig,
)


@pytest.mark.parametrize("cls,kwargs,quoted", [
    (GeneratorConfig, {"scale": 3}, "3"),
    (GeneratorConfig, {"n_blocks": 0}, "0"),
    (GeneratorConfig, {"n_features": 2}, "2"),
    (GeneratorConfig, {"in_channels": 0}, "0"),
    (GeneratorConfig, {"in_channels": 1, "out_channels": 3}, "1 and 3"),
    (DiscriminatorConfig, {"n_features": 1}, "1"),
    (NormalizationConfig, {"low": 50.0, "high": 10.0}, "low=50.0 high=10.0"),
    (NormalizationConfig, {"low": 1.0, "high": 101.0}, "101.0"),
    (DegradationConfig, {"method": "nearest"}, "'nearest'"),
    (DegradationConfig, {"scale": 5}, "5"),
    (DegradationConfig, {"blur_sigma": (2.0, 1.0)}, "(2.0, 1.0)"),
    (DegradationConfig, {"poisson_peak": (-1.0, 10.0)}, "(-1.0, 10.0)"),
    (DegradationConfig, {"gaussian_sigma": (0.1,)}, "(0.1,)"),
    (DegradationConfig, {"blur_sigma": 1.5}, "1.5"),
    (DegradationConfig, {"degraded_fraction": 1.5}, "1.5"),
    (DegradationConfig, {"degraded_fraction": -0.1}, "-0.1"),
    (LossConfig, {"w_adv": -0.5}, "-0.5"),
    (LossConfig, {"w_texture": -1.0}, "-1.0"),
    (LossConfig, {"feature_extractor": "alexnet"}, "'alexnet'"),
    (DataConfig, {"val_fraction": 1.5}, "1.5"),
    (DataConfig, {"max_val_images": 0}, "0"),
    (DataConfig, {"well_regex": "(["}, "'(['"),
    (DataConfig, {"train": 5}, "5"),
    (DataConfig, {"channel_axis": "x"}, "'x'"),
    (TrainConfig, {"lr_min_fraction": -2.0}, "-2.0"),
    (TrainConfig, {"seed": -1}, "-1"),
    (TrainConfig, {"lr": 0.0}, "0.0"),
    (TrainConfig, {"gan_lr": -1e-4}, "-0.0001"),
    (TrainConfig, {"patch_size": 8}, "8"),
    (TrainConfig, {"pixel_loss": "huber"}, "'huber'"),
    (TrainConfig, {"device": "tpu"}, "'tpu'"),
    (TrainConfig, {"pretrain_steps": 0, "gan_steps": 0}, "pretrain_steps + gan_steps"),
])
def test_bad_values_raise_quoting_the_value(cls, kwargs, quoted):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert quoted in str(info.value)


def test_defaults_are_valid_and_consistent():
    config = ExperimentConfig()
    assert config.generator.scale == config.degradation.scale == 4
    assert config.normalization == NormalizationConfig(low=1.0, high=99.8)


@pytest.mark.parametrize("kwargs,message", [
    ({"generator": GeneratorConfig(scale=2)}, "degradation.scale"),
    ({"train": TrainConfig(patch_size=18)}, "multiple"),
    ({"discriminator": DiscriminatorConfig(in_channels=3)}, "out_channels"),
    ({"generator": GeneratorConfig(scale=8), "degradation": DegradationConfig(scale=8), "train": TrainConfig(patch_size=24),
      "loss": LossConfig(w_texture=1.0)}, "at least 4 x the scale"),
])
def test_sections_must_agree(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(**kwargs)


def _write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_toml_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("MSRGAN_TEST_DATA", "/data/screen")
    path = _write(tmp_path, """
        [generator]
        scale = 2
        n_blocks = 4
        n_features = 32

        [degradation]
        method = "bicubic"
        scale = 2
        blur_sigma = [0.5, 1.5]

        [loss]
        w_content = 0.01
        feature_extractor = "vgg19"
        vgg19_weights = "/weights/vgg19.pth"

        [data]
        train = ["$MSRGAN_TEST_DATA/images/*.tif", "/abs/plate2"]
        well_regex = "_(?P<well>[A-P][0-9]{2})_"

        [train]
        patch_size = 48
        lr = 2e-4
        mixed_precision = false
    """)
    config = ExperimentConfig.from_toml(path)
    assert config.generator == GeneratorConfig(scale=2, n_blocks=4, n_features=32)
    assert config.degradation.method == "bicubic" and config.degradation.blur_sigma == (0.5, 1.5)
    assert config.loss.w_content == 0.01 and config.loss.vgg19_weights == "/weights/vgg19.pth"
    assert config.data.train == ["/data/screen/images/*.tif", "/abs/plate2"]  # environment variables expanded
    assert config.train.patch_size == 48 and config.train.lr == 2e-4 and config.train.mixed_precision is False
    assert config.normalization == NormalizationConfig()  # absent sections take defaults
    assert ExperimentConfig.from_dict(config.to_dict()) == config


def test_toml_single_train_path(tmp_path):
    path = _write(tmp_path, '[data]\ntrain = "plate1"\n')
    assert ExperimentConfig.from_toml(path).data.train == ["plate1"]


def test_unknown_keys_are_rejected_by_name(tmp_path):
    path = _write(tmp_path, "[generator]\nscale = 4\nn_block = 8\n")
    with pytest.raises(ConfigError, match=r"'n_block'.*\[generator\]"):
        ExperimentConfig.from_toml(path)


def test_unknown_sections_are_rejected(tmp_path):
    path = _write(tmp_path, "[optimizer]\nlr = 1e-4\n")
    with pytest.raises(ConfigError, match="'optimizer'"):
        ExperimentConfig.from_toml(path)


def test_bad_value_in_toml_quotes_it(tmp_path):
    path = _write(tmp_path, '[degradation]\nmethod = "lanczos"\n')
    with pytest.raises(ConfigError, match="'lanczos'"):
        ExperimentConfig.from_toml(path)


@pytest.mark.parametrize("text,quoted", [
    ('[generator]\nn_blocks = "16"\n', "'16'"),
    ("[generator]\nn_blocks = 2.5\n", "2.5"),
    ("[train]\nlr = true\n", "True"),
    ('[train]\nmixed_precision = "no"\n', "'no'"),
    ("[degradation]\nblur_sigma = 1.0\n", "1.0"),
    ('[degradation]\nblur_sigma = ["a", "b"]\n', "'a'"),
    ('[degradation]\ndegraded_fraction = "half"\n', "'half'"),
    ("train = 5\n", "[train] must be a table"),
])
def test_wrong_types_in_toml_are_config_errors(tmp_path, text, quoted):
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_toml(_write(tmp_path, text))
    assert quoted in str(info.value)


def test_integer_where_a_float_is_expected_is_fine(tmp_path):
    config = ExperimentConfig.from_toml(_write(tmp_path, "[loss]\nw_pixel = 1\n[normalization]\nlow = 0\nhigh = 100\n"))
    assert config.loss.w_pixel == 1 and config.normalization.high == 100


def test_missing_and_invalid_toml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ExperimentConfig.from_toml(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ExperimentConfig.from_toml(_write(tmp_path, "[generator\nscale = 4\n"))


def test_the_checked_in_recipes_load_and_read_their_data_folder_from_msrgan_data(monkeypatch):
    from pathlib import Path

    from msrgan_core.config import load_config

    monkeypatch.setenv("MSRGAN_DATA", "/data/screens")
    recipes = sorted((Path(__file__).parents[1] / "msrgan_core" / "configs").glob("*.toml"))
    assert [p.name for p in recipes] == ["default_models.toml", "default_models_adversarial.toml"]
    for recipe in recipes:
        config = load_config(recipe)
        assert config.data.train == ["/data/screens/bbbc039/images", "/data/screens/dsb2018_fluorescence"]
        assert config.degradation.method == "bin" and config.generator.scale == 4
        assert config.loss.feature_extractor == "discriminator"
    # stage 2 trains stage 1's output on: same network, normalisation, degradation, data and seed
    # (so the same held-out split), and it reads the file that `make models` writes in stage 1
    configs = {p.stem: load_config(p) for p in recipes}
    stage1, stage2 = configs["default_models"], configs["default_models_adversarial"]
    assert stage2.train.init == "runs/default_models/fidelity.safetensors" and stage1.train.init == ""
    assert (stage2.generator, stage2.normalization, stage2.degradation, stage2.data) == \
        (stage1.generator, stage1.normalization, stage1.degradation, stage1.data)
    assert stage2.train.seed == stage1.train.seed
    assert configs["default_models"].train.gan_steps == 0 and configs["default_models_adversarial"].train.pretrain_steps == 0


@pytest.mark.parametrize("recipe,model", [("default_models", "fidelity"), ("default_models_adversarial", "perceptual")])
def test_each_packaged_model_says_what_its_recipe_trains(recipe, model):
    """The packaged files come out of `make models`: their metadata is the recipe's, times and hardware aside."""
    import dataclasses
    from pathlib import Path

    from msrgan_core.config import load_config
    from msrgan_core.modelcard import read_metadata

    root = Path(__file__).parents[1] / "msrgan_core"
    config = load_config(root / "configs" / f"{recipe}.toml")
    meta = read_metadata(root / "weights" / f"{model}.safetensors")
    assert meta["name"] == model
    assert meta["generator"] == dataclasses.asdict(config.generator)
    assert meta["normalization"] == dataclasses.asdict(config.normalization)
    assert meta["degradation"] == json.loads(json.dumps(dataclasses.asdict(config.degradation)))  # tuples as lists
    trained = meta["training"]
    assert trained["data"] == config.data.description and trained["seed"] == config.train.seed
    assert trained["steps"] == config.train.pretrain_steps + config.train.gan_steps
    assert (trained["batch_size"], trained["patch_size"]) == (config.train.batch_size, config.train.patch_size)
    if model == "perceptual":
        assert meta["loss"] == dataclasses.asdict(config.loss)
        assert trained["init"]["name"] == "fidelity" and config.train.init.endswith("fidelity.safetensors")
    else:
        assert meta["loss"] == {"pixel": config.train.pixel_loss} and trained["init"] is None
    assert set(meta) - {"uncertainty_scale", "uncertainty_calibration"} == {
        "name", "generator", "normalization", "degradation", "loss", "training", "validation", "created",
        "msrgan_version", "format_version", "scale", "in_channels", "out_channels", "influence_radius", "weights_sha256"}


def test_the_training_device_may_name_one_gpu():
    assert TrainConfig(device="GPU:1").device == "cuda:1"
    assert TrainConfig(device="cuda").device == "cuda"
    with pytest.raises(ConfigError, match=r"train.device must be auto, cpu, cuda or cuda:N.*'tpu'"):
        TrainConfig(device="tpu")


def test_other_training_images_do_not_carry_the_configs_description(tmp_path):
    """A fine-tune of default_models.toml on one's own plate had recorded 'trained on: BBBC039 ...';
    the model file names the folders instead (a glob by its folder, not '*')."""
    from pathlib import Path

    from msrgan_core.config import load_config
    from msrgan_core.train import folder_name

    recipe = Path(__file__).parents[1] / "msrgan_core" / "configs" / "default_models.toml"
    assert "BBBC039" in load_config(recipe).data.description
    assert load_config(recipe, ['data.train=["plate 1/*/"]']).data.description == ""
    assert load_config(recipe, ['data.train=["p"]', 'data.description="my plates"']).data.description == "my plates"
    assert [folder_name(p) for p in ("/data/données plaque 1/*/", "../plates/A", "plate/**/*.tif")] == \
        ["données plaque 1", "A", "plate"]


def test_a_set_value_that_is_not_toml_says_how_to_write_it():
    """'False' and an unquoted path list had given 'must be of type bool' and 'no such file' alone."""
    from msrgan_core.config import ConfigError, load_config

    for override, says in [("train.mixed_precision=False", "true and false in lower case"),
                           ("data.train=[/plates/a]", "is not a TOML list"),
                           ("degradation.blur_sigma=[0, 1", "is not a TOML list")]:
        with pytest.raises(ConfigError, match=says):
            load_config(None, [override])
    assert load_config(None, ["data.description=my plates"]).data.description == "my plates"  # plain words: text
