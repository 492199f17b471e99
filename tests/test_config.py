"""Config: params.yaml holds every default and validates; overrides are typed and checked up front."""
import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from pipeline.config.compare import CompareConfig, build_compare
from pipeline.config.tasks import CONFIGS, PARAMS_FILE, build_config, parse_point
from pipeline.config.tune import TuneConfig
from pipeline.config.train import TrainConfig
from pipeline.core.errors import UsageError
from pipeline.optim.registry import NOTEBOOK_OPTIMIZERS, optimizer_names

SECTIONS = {**CONFIGS, "compare": CompareConfig, "tune": TuneConfig, "train": TrainConfig}  # configs outside CONFIGS


def test_params_yaml_has_a_complete_section_per_entry_point():
    document = yaml.safe_load(PARAMS_FILE.read_text())
    assert set(document) == set(SECTIONS)
    for section, cls in SECTIONS.items():
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        assert set(document[section]) == required, section


@pytest.mark.parametrize("section", [name for name in SECTIONS if name != "predict"])
def test_defaults_are_params_yaml_values_with_their_field_types(section):
    section_values = yaml.safe_load(PARAMS_FILE.read_text())[section]
    config = build_config(section, cls=SECTIONS[section])
    hints = typing.get_type_hints(SECTIONS[section])
    for name, written in section_values.items():
        value = getattr(config, name)
        if written is None:  # null: unset, resolved later (e.g. the optimizer's own lr)
            assert value is None, name
            continue
        wanted = next(t for t in typing.get_args(hints[name]) or (hints[name],) if t is not type(None))
        assert type(value) is wanted, (name, value, wanted)
        assert value == (wanted(written) if wanted is float else written), (name, value, written)


def test_default_configs_hold_the_documented_settings():
    toy = build_config("toy")
    assert (toy.optimizer, toy.function, toy.lr, toy.momentum, toy.steps, toy.start, toy.tolerance, toy.seed,
            toy.experiment) == ("adam", "ackley", None, None, 500, "default", 1e-6, 0, "optlab-toy")
    assert toy.optimizer_settings.kwargs["lr"] == 0.001  # adam's own default fills the unset lr
    assert toy.start_point() is None
    cifar = build_config("cifar")
    # the notebook's setting: SGD with momentum, batch 32, 5 epochs, every image, no schedule
    assert (cifar.optimizer, cifar.batch_size, cifar.epochs, cifar.train_limit, cifar.val_limit,
            cifar.scheduler) == ("momentum", 32, 5, 0, 0, "none")
    assert (cifar.model, cifar.pretrained, cifar.data_dir, cifar.download, cifar.device) == (
        "resnet18", False, "data", True, "auto")
    assert (cifar.seed, cifar.target_acc, cifar.resume, cifar.checkpoint_every_s, cifar.log_model,
            cifar.register, cifar.model_name, cifar.experiment) == (0, 0.8, False, 60.0, True, False,
                                                                    "optlab-cifar", "optlab-cifar")
    compare = build_compare()
    assert (compare.task, compare.optimizers, compare.rerun, compare.from_runs, compare.lockstep,
            compare.experiment) == ("toy", "default", False, "", False, "optlab-compare")
    assert [child.optimizer for child in compare.children] == [n for n in optimizer_names() if n != "muon"]
    # each child: toy's defaults with its own optimizer, logged in the sweep's experiment
    assert all(dataclasses.replace(child, optimizer="adam", experiment="optlab-toy") == toy
               and child.experiment == "optlab-compare" for child in compare.children)
    cifar_sweep = build_compare({"task": "cifar"})
    assert [child.optimizer for child in cifar_sweep.children] == [*NOTEBOOK_OPTIMIZERS, "nesterov"]
    assert all(child.register and child.epochs == 5 for child in cifar_sweep.children)  # champion needs models
    modern = build_compare({"task": "cifar", "optimizers": "modern,adam,adamw"})
    assert [child.optimizer for child in modern.children] == [
        "nadamw", "adafactor", "muon", "lion", "sfadamw", "soap", "shampoo", "adamw", "nesterov", "adam"]


def test_predict_needs_a_model_uri_and_says_so():
    with pytest.raises(UsageError, match="model_uri: expected a model URI such as runs:/<run_id>/model"):
        build_config("predict")


def test_overrides_are_typed_and_win_over_params_yaml():
    config = build_config("toy", {"optimizer": "nesterov", "lr": "1e-3", "steps": "20", "start": "-2,-2.5",
                                  "momentum": "0.8"})
    assert (config.optimizer, config.lr, config.steps, config.momentum) == ("nesterov", 0.001, 20, 0.8)
    assert config.start_point() == (-2.0, -2.5)


def test_unset_words_restore_the_optimizers_default_lr():
    for word in ("", "none", "default", "null"):
        assert build_config("toy", {"lr": word}).lr is None


def test_config_is_frozen():
    config = build_config("toy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0


@pytest.mark.parametrize("overrides,message", [
    ({"optimizer": "nope"}, "unknown optimizer 'nope'; choose one of: sgd, momentum"),
    ({"function": "x"}, "unknown function 'x'; choose one of: ackley"),
    ({"lr": "-1"}, "lr: expected a number > 0, got -1.0"),
    ({"lr": "nan"}, "lr: expected a finite number, got 'nan'"),
    ({"lr": "abc"}, "lr: expected a finite number, got 'abc'"),
    ({"steps": "0"}, "steps: expected an integer in [1, 1000000], got 0"),
    ({"steps": "9" * 30}, "steps: expected an integer in [1, 1000000], got 9999"),
    ({"steps": "+-5"}, "steps: expected an integer, got '+-5'"),
    ({"steps": "²"}, "steps: expected an integer, got '²'"),
    ({"steps": "9" * 5000}, "steps: expected an integer, got '9999"),
    ({"seed": "4294967296"}, "seed: expected an integer in [0, 4294967295], got 4294967296"),
    ({"steps": "2.5"}, "steps: expected an integer, got '2.5'"),
    ({"start": "1"}, "start: expected two numbers 'x,y'"),
    ({"start": "1,inf"}, "start: both coordinates must be finite"),
    ({"momentum": "1.5", "optimizer": "sgd"}, "momentum: expected a number in [0, 1), got 1.5"),
    ({"momentum": "0.5", "optimizer": "adam"}, "optimizer 'adam' does not take momentum"),
    ({"tolerance": "-1"}, "tolerance: expected a number >= 0"),
    ({"optimzer": "adam"}, "unknown param 'optimzer' for toy (did you mean 'optimizer'?)"),
])
def test_bad_values_name_the_param_and_the_valid_choices(overrides, message):
    with pytest.raises(UsageError) as caught:
        build_config("toy", overrides)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("overrides,message", [
    ({"lr": "1e31"}, "lr: expected a number <= 1e+30, got 1e+31"),
    ({"weight_decay": "1e300"}, "weight_decay: expected a number <= 1e+30, got 1e+300"),
    ({"seed": "9" * 20}, "seed: expected an integer in [0, 4294967295], got 9999"),
])
def test_cifar_refuses_what_float32_weights_and_seeded_generators_cannot_take(overrides, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        build_config("cifar", overrides)


def test_parse_point():
    assert parse_point(" 1.5, -2 ") == (1.5, -2.0)
    with pytest.raises(UsageError):
        parse_point("1,2,3")


def test_a_broken_params_file_is_reported(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("toy:\n  optimizer: adam\n")
    with pytest.raises(UsageError, match="lacks toy.experiment"):
        build_config("toy", params_file=params)


PARAMS_TEXT = Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text()


@pytest.mark.parametrize("text,message", [
    ("toy: [1, 2\n", "not valid YAML at line 2"),
    ("toy:\n  optimizer: adam\n   steps: 3\n", "not valid YAML at line 3"),
    ("- a list\n- not a mapping\n", "section 'toy' must be a mapping of param: value, got list"),
    ("toy: adam\n", "section 'toy' must be a mapping of param: value, got str"),
    ("other:\n  x: 1\n", "section 'toy' must be a mapping of param: value, got NoneType"),
    ("", "section 'toy' must be a mapping of param: value, got NoneType"),
    (PARAMS_TEXT.replace("  steps: 500", "  stpes: 500"), "unknown param 'stpes' for toy (did you mean 'steps'?)"),
    (PARAMS_TEXT.replace("  steps: 500", "  steps: many"), "steps: expected an integer, got 'many'"),
])
def test_a_malformed_params_file_is_one_line_naming_the_problem(tmp_path, text, message):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    with pytest.raises(UsageError) as caught:
        build_config("toy", params_file=params)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_params_file_that_is_not_text_is_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_bytes(bytes(range(256)))
    with pytest.raises(UsageError, match="params.yaml"):
        build_config("toy", params_file=params)


def test_names_the_tracking_store_would_refuse_are_refused_up_front():
    with pytest.raises(UsageError, match="at most 256 characters"):
        build_config("toy", {"experiment": "e" * 257})
    assert build_config("toy", {"experiment": "e" * 256}).experiment == "e" * 256
    with pytest.raises(UsageError, match="data_dir: expected at most 1000 characters"):
        build_config("cifar", {"data_dir": "d" * 1001})


def test_a_sweep_setting_no_listed_optimizer_takes_is_refused_not_dropped():
    with pytest.raises(UsageError, match="momentum: none of adam, adamw takes it; it is for sgd, momentum"):
        build_compare({"optimizers": "adam,adamw", "momentum": "0.5"})
    sweep = build_compare({"optimizers": "sgd,adam", "momentum": "0.5"})
    assert [child.momentum for child in sweep.children] == [0.5, None]
    assert build_compare({"optimizers": "adam,adamw", "momentum": "default"}).children[0].momentum is None


from hypothesis import given, settings
from hypothesis import strategies as st  # noqa: E402

from pipeline.cli import parse_overrides  # noqa: E402

_TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["__import__('os').system('id')", "$(rm -rf /)", "; ls",
                                                           "1e309", "-0", "nan", "inf", "9" * 400, "0x10", "😀",
                                                           "²", "+-5", "9" * 5000]))


@settings(max_examples=300, deadline=None)
@given(section=st.sampled_from(["toy", "cifar", "compare", "predict"]),
       overrides=st.dictionaries(st.sampled_from(["optimizer", "lr", "steps", "start", "function", "epochs",
                                                  "batch_size", "model", "data_dir", "seed", "scheduler",
                                                  "device", "task", "optimizers", "momentum", "bogus"]), _TEXT,
                                 max_size=4))
def test_any_input_is_a_config_or_one_usage_error_line(section, overrides):
    try:
        build_compare(overrides) if section == "compare" else build_config(section, overrides)
    except UsageError as error:
        assert str(error) and "\n" not in str(error)


@settings(max_examples=200, deadline=None)
@given(st.lists(_TEXT, max_size=6))
def test_any_argv_parses_or_is_a_usage_error(argv):
    try:
        parsed = parse_overrides(argv)
    except UsageError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())
