"""The example scripts' command lines: toy defaults only for the toy world, whole flag names, typos named."""

import runpy
import sys
from pathlib import Path

import pytest
import yaml


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pararl_script():
    return runpy.run_path(str(REPO / "examples" / "pararl.py"), run_name="examples_pararl")


@pytest.fixture(scope="module")
def sft_script():
    return runpy.run_path(str(REPO / "examples" / "sft.py"), run_name="examples_sft")


def parsed(script, argv):
    parser, toy_defaults = script["make_parser"](argv)
    script["check_flags"](parser, argv)
    return parser.parse_args_and_config(argv), toy_defaults


def test_toy_defaults_apply_only_to_the_toy_world(pararl_script, tmp_path):
    from pararl import DiffusionGRPOConfig

    toy = pararl_script["TOY_DEFAULTS"]
    (_, args, model_args), applied = parsed(pararl_script, ["--max_steps", "4"])
    assert args.max_steps == 4 and "max_steps" not in applied  # the command line wins, and is not reported as toy
    assert args.learning_rate == toy["learning_rate"] and args.output_dir == toy["output_dir"] and model_args.use_peft
    assert applied["save_strategy"] == "no"

    trl = DiffusionGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)  # the dataclass's own defaults
    for argv in (["--model_name_or_path", "/local/MMaDA-Parallel-M"], ["--dataset_name", "/local/data"]):
        (_, args, model_args), applied = parsed(pararl_script, argv)
        assert applied == {}
        assert (args.max_steps, args.learning_rate, args.save_strategy) == (
            trl.max_steps,
            trl.learning_rate,
            trl.save_strategy,
        )
        assert args.output_dir != toy["output_dir"] and not model_args.use_peft

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": "/local/MMaDA-Parallel-M"}))
    (_, args, _), applied = parsed(pararl_script, ["--config", str(config)])
    assert applied == {} and args.max_steps == trl.max_steps


def test_sft_toy_defaults_apply_only_to_the_toy_world(sft_script, tmp_path):
    from pararl.sft import ParallelSFTConfig

    (_, args, _), applied = parsed(sft_script, [])
    assert args.learning_rate == sft_script["TOY_DEFAULTS"]["learning_rate"] and applied["eval_strategy"] == "epoch"
    (_, args, _), applied = parsed(sft_script, ["--model_name_or_path", "/local/checkpoint"])
    trl = ParallelSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert applied == {} and (args.learning_rate, args.eval_strategy) == (trl.learning_rate, trl.eval_strategy)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_rew", "2"], "--num_rew is not a flag; abbreviations are not accepted, write the whole name: "
         "--num_reward_steps"),
        (["--num_reward_stepz", "2"], "unrecognized flag --num_reward_stepz; did you mean --num_reward_steps"),
        (["--learning_rte=1e-5"], "unrecognized flag --learning_rte; did you mean --learning_rate"),
    ],
)  # fmt: skip
def test_abbreviations_and_typos_are_refused_with_the_closest_flag(pararl_script, sft_script, argv, message, capsys):
    for script in (pararl_script, sft_script) if "num_rew" not in argv[0] else (pararl_script,):
        parser, _ = script["make_parser"](argv)
        with pytest.raises(SystemExit) as exit_info:
            script["check_flags"](parser, argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_generate_refuses_abbreviations(capsys):
    generate = runpy.run_path(str(REPO / "examples" / "generate.py"), run_name="examples_generate")
    with pytest.raises(SystemExit):
        generate["parse_args"](["--prompt", "x", "--num_step", "4"])
    assert "write the whole name: --num_steps" in capsys.readouterr().err
    assert generate["parse_args"](["--prompt", "x", "--num_steps", "4"]).num_steps == 4


@pytest.mark.parametrize("script", ["pararl.py", "sft.py"])
def test_the_script_refuses_a_typo_before_anything_else(script, pararl_script, monkeypatch, capsys):
    # The script's own `__main__` block, in this process (its imports are already loaded: no interpreter start-up).
    monkeypatch.setattr(sys, "argv", [script, "--num_reward_stepz", "2", "--learning_rte", "1"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "examples" / script), run_name="__main__")
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    expected = "--num_reward_stepz; did you mean --num_reward_steps" if script == "pararl.py" else "--num_reward_stepz"
    assert expected in captured.err
    assert "defaults" not in captured.out  # refused before the defaults are reported, before training
