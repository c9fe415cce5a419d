"""Training config (defaults = paper recipe, files, overrides, validation) and the optimiser set-up."""

import itertools
import json
import math

import pytest
import torch

from siammae.errors import InputError
from siammae.model.registry import create_model
from siammae.train.config import TrainConfig, read_config_file
from siammae.train.optim import build_optimizer, lr_at, param_groups


def test_defaults_are_the_paper_recipe():
    cfg = TrainConfig()
    assert cfg.gap == (4, 48) and cfg.repeat == 2 and cfg.crop_scale == (0.5, 1.0) and cfg.augment == "spatial"
    assert cfg.betas == (0.9, 0.95) and cfg.weight_decay == 0.05 and cfg.blr == 1.5e-4
    assert cfg.batch_size == 2048 and cfg.warmup_epochs == 40 and cfg.epochs == 2000
    assert cfg.peak_lr == pytest.approx(1.5e-4 * 2048 / 256)
    assert TrainConfig(lr=1e-3).peak_lr == 1e-3
    assert TrainConfig().model_overrides() == {}


def test_ablation_fields_map_onto_the_model_config():
    cfg = TrainConfig(
        model="tiny",
        mask_ratio_f1=0.5,
        mask_ratio_f2=0.5,
        masking="grid",
        encoder_mode="joint",
        decoder="cross",
        input_size=32,
    )
    model = create_model(cfg.model, **cfg.model_overrides())
    mc = model.config
    assert (mc.mask_ratio_f1, mc.mask_ratio_f2, mc.masking, mc.encoder_mode, mc.decoder, mc.img_size) == (
        0.5,
        0.5,
        "grid",
        "joint",
        "cross",
        32,
    )


def test_files_and_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('model = "tiny"\ndata = "/videos"\ngap = [8, 8]\nbatch-size = 64\nblr = 1e-4\n')
    cfg = TrainConfig.from_file(toml, blr=2e-4, seed=5)
    assert (cfg.model, cfg.data, cfg.gap, cfg.batch_size, cfg.blr, cfg.seed) == (
        "tiny",
        ("/videos",),
        (8, 8),
        64,
        2e-4,
        5,
    )
    js = tmp_path / "run.json"
    js.write_text(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_file(js) == cfg
    assert read_config_file(js)["gap"] == [8, 8]


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"batch": 4}', r"unknown setting 'batch'; valid: data, "),
        ('{"epochs": "ten"}', r"c\.json: epochs = 'ten': must be a whole number"),
        ('{"gap": [4]}', r"gap = \[4\]: expected 2 values"),
        ('{"resume": 1}', "resume = 1: must be true or false"),
        ('{"crop_scale": [0, 1]}', r"crop_scale = \(0\.0, 1\.0\): must be in \(0, 1\]"),
        ("[1, 2]", "expected a table of settings"),
        ("{oops", "not readable JSON"),
        ("[" * 100_000, "nested too deeply"),  # a RecursionError before
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path, text, match):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        TrainConfig.from_file(path)


def test_bad_values_are_rejected():
    with pytest.raises(InputError, match=r"gap = \(8, 4\): needs min <= max"):
        TrainConfig(gap=(8, 4))
    with pytest.raises(InputError, match=r"gap = \(0, 4\): must be >= 1"):
        TrainConfig(gap=(0, 4))
    with pytest.raises(InputError, match="multiple of repeat = 2"):
        TrainConfig(batch_size=7)
    with pytest.raises(InputError, match="decoder = 'self': valid: cross-self, cross, joint"):
        TrainConfig(decoder="self")
    with pytest.raises(InputError, match="mask_ratio_f2"):
        TrainConfig(mask_ratio_f2=1.0)
    with pytest.raises(InputError, match="no such file"):
        TrainConfig.from_file("/nonexistent.toml")
    with pytest.raises(InputError, match=r"expected a \.json or \.toml"):
        read_config_file(__file__)


def test_every_field_declares_its_rule_and_checkpoint_configs_load():
    """Validation is declarative: every field carries a Rule (help text, range / choices), one loop checks them,
    and a stored config (to_dict, lists for tuples, ints for floats) rebuilds the same config with TrainConfig(**d)."""
    from dataclasses import fields

    from siammae.config_rules import Rule
    from siammae.train.config import describe

    assert all(isinstance(f.metadata.get("rule"), Rule) and f.metadata["rule"].help for f in fields(TrainConfig))
    cfg = TrainConfig(data="videos", gap=[2, 9], warmup_epochs=3, total_steps=50, warmup_frac=0.1, lr=1)
    assert cfg.data == ("videos",) and cfg.gap == (2, 9) and cfg.warmup_epochs == 3.0 and cfg.lr == 1.0
    assert TrainConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert "augment (str, default 'spatial'; valid: spatial, none, color, both)" in describe()
    with pytest.raises(InputError, match=r"^lr = 0\.0: must be > 0$"):
        TrainConfig(lr=0.0)
    with pytest.raises(InputError, match=r"^betas = \(0\.9, 1\.0\): must be in \[0, 1\)$"):
        TrainConfig(betas=(0.9, 1.0))
    with pytest.raises(InputError, match=r"^out = None: cannot be empty"):
        TrainConfig(out=None)


def test_param_groups_decay_only_weight_matrices():
    model = create_model("tiny", pos_embed="learned")
    groups = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[0]["params"]}
    decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.05
    assert {
        "encoder.pos_embed",
        "encoder.cls_token",
        "mask_token",
        "encoder.norm.weight",
        "encoder.blocks.0.attn.qkv.bias",
        "decoder_norm.bias",
    } <= no_decay
    assert {"encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight", "decoder_pred.weight"} <= decay
    assert "decoder_pos_embed" not in no_decay | decay  # frozen sin-cos table
    assert all(names[id(p)].endswith("weight") for p in groups[1]["params"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert no_decay | decay == trainable and not no_decay & decay
    sincos = create_model("tiny")  # fixed sin-cos table: not a parameter to optimise
    assert id(sincos.encoder.pos_embed) not in {id(p) for g in param_groups(sincos, 0.05) for p in g["params"]}


def test_optimizer_is_adamw_with_the_groups():
    model = create_model("tiny")
    opt = build_optimizer(model, 1e-3, 0.05, (0.9, 0.95), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_lr_schedule_warms_up_then_follows_half_cosine():
    kw = dict(peak_lr=1.0, min_lr=0.1, warmup_epochs=10, epochs=110)
    assert lr_at(0, **kw) == 0
    assert lr_at(5, **kw) == pytest.approx(0.5)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, **kw) == pytest.approx(0.1)
    values = [lr_at(e / 4, **kw) for e in range(40, 441)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # monotone after warm-up


def test_every_setting_is_an_option_with_the_settings_own_help():
    """siammae-train's options are made from TrainConfig's fields: one each (a new field gets one without a line in
    cli/train.py), named after the field, with its default, its choices and its help, which lives only in the field."""
    from dataclasses import fields

    from siammae.cli.train import cli
    from siammae.config_rules import rule_of

    options = {p.name: p for p in cli.params}
    assert set(options) == {f.name for f in fields(TrainConfig)} | {"config_file"}
    for f in fields(TrainConfig):
        option = options[f.name]
        assert option.help == rule_of(f).help + ".", f.name
        assert option.default == (None if f.default in (None, ()) else f.default), f.name
    assert options["encoder_mode"].opts == ["--encoder"] and options["max_steps"].opts == ["--max-steps"]
    assert options["resume"].is_flag and options["data"].multiple and options["gap"].nargs == 2
    assert list(options["augment"].type.choices) == ["spatial", "none", "color", "both"]


def test_flags_reach_the_config_as_the_fields_they_name(tmp_path, monkeypatch):
    """Only the flags given are passed on (a config file's values stand otherwise), each to its field."""
    from click.testing import CliRunner

    import siammae.cli.train as T

    seen = []

    def stop(cfg):  # the first thing the command does with the config: look at it, then stop
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(T, "check_run", stop)
    config = tmp_path / "c.json"
    config.write_text('{"epochs": 7, "warmup_epochs": 1, "repeat": 4, "batch_size": 8}')
    args = ["--config", config, "--encoder", "joint", "--gap", "2", "3", "--data", "a", "--data", "b", "--resume"]
    result = CliRunner().invoke(T.cli, [*map(str, args), "--repeat", "2"])
    assert result.exit_code == 0, result.output
    cfg = seen[0]
    assert (cfg.encoder_mode, cfg.gap, cfg.data, cfg.resume) == ("joint", (2, 3), ("a", "b"), True)
    assert (cfg.epochs, cfg.repeat, cfg.batch_size, cfg.blr) == (7, 2, 8, 1.5e-4)  # file, flag over file, default
