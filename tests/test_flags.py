from dataclasses import dataclass, field

import pytest

from smolvla.cli import main
from smolvla.errors import ConfigError
from smolvla.flags import apply_flags, apply_mapping, describe, flag_names, load_config_file, to_mapping


@dataclass
class Inner:
    task: str = "reach"
    cameras: tuple[str, ...] = ("a", "b")
    flag: bool = True


@dataclass
class Outer:
    env: Inner = field(default_factory=Inner)
    steps: int = 3
    lr: float | None = None


def test_nested_typed_flags():
    config = apply_flags(Outer(), ["--env.task=push", "--env.cameras=x,y,z", "--env.flag", "false", "--lr=1e-3"])
    assert config == Outer(Inner("push", ("x", "y", "z"), False), 3, 1e-3)
    assert apply_flags(Outer(lr=0.1), ["--lr=none", "--steps=7"]) == Outer(steps=7, lr=None)
    assert flag_names(Outer()) == ["env.task", "env.cameras", "env.flag", "steps", "lr"]
    assert "  --env.cameras=a,b" in describe(Outer()).splitlines()
    # A bare boolean flag means true; a value may still follow as the next argument.
    assert apply_flags(Outer(Inner(flag=False)), ["--env.flag", "--steps=2"]) == Outer(Inner(flag=True), 2)
    assert apply_flags(Outer(Inner(flag=False)), ["--env.flag"]).env.flag is True


def test_config_files_apply_like_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("env:\n  task: push\n  cameras: [x, y]\n  flag: false\nlr: 0.5\n")
    config = apply_mapping(Outer(), load_config_file(str(path)))
    assert config == Outer(Inner("push", ("x", "y"), False), 3, 0.5)
    assert apply_mapping(Outer(), to_mapping(config)) == config  # what a run saves, it can reload
    with pytest.raises(ConfigError, match=r"unknown flag --env\.tsk"):
        apply_mapping(Outer(), {"env": {"tsk": "push"}})
    with pytest.raises(ConfigError, match="steps is a single setting"):
        apply_mapping(Outer(), {"steps": {"x": 1}})
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env.tsk=push"], "unknown flag --env.tsk; valid flags: --env.task, --env.cameras, --env.flag"),
        (["--env=push"], "--env is a group; set its fields: --env.task"),
        (["--steps=three"], "--steps: expected int, got 'three'"),
        (["--env.flag=maybe"], "--env.flag: expected bool"),
        (["--steps"], "flag --steps has no value"),
        (["steps=3"], "unexpected argument 'steps=3'"),
        (["--steps.x=1"], "steps has no sub-settings"),
    ],
)
def test_bad_flags_are_named(argv, message):
    with pytest.raises(ConfigError) as err:
        apply_flags(Outer(), argv)
    assert message in str(err.value)


@dataclass
class Mappings:
    names: dict[str, str] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)


def test_mapping_flags_check_their_values_type():
    """A mapping setting's values are checked against its declared type: names are strings, step counts whole
    numbers (not 1.5, not a boolean), from flags and from config files alike."""
    config = apply_flags(Mappings(), ['--names={"top": "camera1"}', '--steps={"handle-pull": 80}'])
    assert config == Mappings({"top": "camera1"}, {"handle-pull": 80})
    assert apply_mapping(Mappings(), {"steps": {"handle-pull": 80}}).steps == {"handle-pull": 80}
    ranges = apply_mapping(Mappings(), {"ranges": {"handle-pull": [-0.1, -0.045]}}).ranges
    assert (
        ranges
        == {"handle-pull": (-0.1, -0.045)}
        == apply_flags(Mappings(), ['--ranges={"handle-pull": [-0.1, -0.045]}']).ranges
    )
    for argv, message in (
        (['--steps={"a": 1.5}'], "--steps: expected a JSON object of int values"),
        (['--steps={"a": true}'], "--steps: expected a JSON object of int values"),
        (['--names={"a": 1}'], "--names: expected a JSON object of strings"),
        (['--ranges={"a": -0.1}'], "--ranges: expected a JSON object of lists"),
        (['--ranges={"a": [-0.1]}'], "--ranges.a: expected 2 comma-separated items"),
        (['--ranges={"a": [-0.1, "low"]}'], "--ranges.a: expected float, got 'low'"),
        (["--offset=0,0"], "--offset: expected 3 comma-separated items"),
    ):
        with pytest.raises(ConfigError) as err:
            apply_flags(Mappings(), argv)
        assert message in str(err.value)


def test_cli_reports_bad_flags_with_exit_code_2(capsys):
    assert main(["eval", "--eval.bogus=1"]) == 2
    assert "unknown flag --eval.bogus" in capsys.readouterr().err
    assert main(["collect", "--help"]) == 0
    assert "--env.task=mt10" in capsys.readouterr().out
    assert main(["train-everything"]) == 2
    assert main(["train", "--help"]) == 0
    assert "--policy.path=None" in capsys.readouterr().out
    assert main(["train", "--steps=10"]) == 2
    assert "no dataset" in capsys.readouterr().err
