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


def test_the_no_argument_main_job_is_the_toy_recipe(pararl_script):
    # examples/pararl.py and the benchmarks build the toy job from pararl.toy.recipe: with no flag, the script's
    # training config, LoRA adapter and prompt counts are exactly the recipe's.
    from pararl.cli import diffusion_peft_config
    from pararl.toy.recipe import TOY_EVAL_SAMPLES, TOY_TRAIN_SAMPLES, toy_grpo_config, toy_lora_config

    (script_args, args, model_args), _ = parsed(pararl_script, [])
    recipe = toy_grpo_config()
    parsed_fields, recipe_fields = args.to_dict(), recipe.to_dict()
    differing = [key for key in recipe_fields if key != "logging_dir" and parsed_fields[key] != recipe_fields[key]]
    assert differing == []
    assert diffusion_peft_config(model_args).to_dict() == toy_lora_config().to_dict()
    assert (script_args.toy_train_samples, script_args.toy_eval_samples) == (TOY_TRAIN_SAMPLES, TOY_EVAL_SAMPLES)
    # A real run's own --lora_target_modules win over the attention projections.
    (_, _, model_args), _ = parsed(
        pararl_script, ["--model_name_or_path", "m", "--use_peft", "--lora_target_modules", "ff_out"]
    )
    assert diffusion_peft_config(model_args).target_modules == "ff_out"


@pytest.mark.parametrize("script", ["pararl", "sft"])
def test_trl_dataset_flags_are_honoured(script, pararl_script, sft_script, tmp_path):
    # The scripts' arguments are TRL's ScriptArguments: its dataset flags load the data as TRL's scripts do.
    import datasets

    rows = {"prompt": ["draw a red dot .", "draw a blue bar ."], "task": ["generate", "generate"]}
    folder = tmp_path / "data"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "dev": datasets.Dataset.from_dict(rows)}
    ).save_to_disk(folder)
    module = pararl_script if script == "pararl" else sft_script

    def load(*flags):
        argv = ["--model_name_or_path", "m", "--dataset_name", str(folder), "--dataset_test_split", "dev", *flags]
        (script_args, args, _), _ = parsed(module, argv)
        return (
            module["load_datasets"](script_args, args) if script == "pararl" else module["load_datasets"](script_args)
        )

    train, test = load("--eval_strategy", "steps")
    assert isinstance(train, datasets.Dataset) and train["prompt"] == rows["prompt"] and len(test) == 2
    train, test = load("--dataset_streaming", "--eval_strategy", "steps")
    assert isinstance(train, datasets.IterableDataset) and isinstance(test, datasets.IterableDataset)
    if script == "pararl":  # GRPO evaluates only when asked to, as TRL's grpo script
        assert load()[1] is None
    with pytest.raises(ValueError, match="ignore_bias_buffers"):
        load("--ignore_bias_buffers")


def _run_main(script, argv, monkeypatch, capsys) -> tuple[int, str, str]:
    """The script's own `__main__` block in this process: exit status, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "examples" / script), run_name="__main__")
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("script", ["pararl.py", "sft.py"])
def test_a_usage_error_is_one_line_and_status_2(script, pararl_script, tmp_path, monkeypatch, capsys):
    config_name = "DiffusionGRPOConfig" if script == "pararl.py" else "ParallelSFTConfig"
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"max_steps": 2, "learnig_rate": 0.1}))
    (tmp_path / "list.yaml").write_text("- max_steps\n")
    (tmp_path / "broken.yaml").write_text("max_steps: [2\n")
    cases = {
        ("--learning_rate", "abc"): "argument --learning_rate/--learning-rate: invalid float value: 'abc'",
        ("--max_steps", "-5"): f"{config_name}: max_steps=-5 must be >= -1 (-1: train for num_train_epochs).",
        (
            "--learning_rate",
            "-1",
        ): f"{config_name}: learning_rate=-1.0 must be >= 0 (0: no update, e.g. a control run).",
        ("--config", str(tmp_path / "typo.yaml")): f"{tmp_path / 'typo.yaml'}: unknown key learnig_rate; did you mean "
        "learning_rate?",
        ("--config", str(tmp_path / "list.yaml")): f"--config {tmp_path / 'list.yaml'} must hold a mapping of flag "
        "names to values, got list",
        ("--config", str(tmp_path / "broken.yaml")): f"--config {tmp_path / 'broken.yaml'} is not valid YAML "
        "(expected ',' or ']', but got '<stream end>' at line 2, column 1)",
    }
    for argv, message in cases.items():
        code, out, err = _run_main(script, list(argv), monkeypatch, capsys)
        assert (code, err) == (2, f"{script}: error: {message}\n"), argv
        assert "defaults" not in out  # refused before anything is announced or loaded


def test_generate_usage_errors_are_one_line(monkeypatch, capsys):
    code, _, err = _run_main("generate.py", ["--prompt", "x", "--num_steps", "four"], monkeypatch, capsys)
    assert (code, err) == (2, "generate.py: error: argument --num_steps: invalid int value: 'four'\n")


def test_accelerate_launch_quiet_with_the_shipped_config_shows_one_line(tmp_path):
    # What the README gives for the toy job: no "values were not passed" list, and with --quiet no launcher traceback.
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--config_file",
               str(REPO / "ds_configs" / "single_process.yaml"), str(REPO / "examples" / "pararl.py"), "--max_steps",
               "-5"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 1  # accelerate's status for a failed script under --quiet
    assert result.stderr == (
        "pararl.py: error: DiffusionGRPOConfig: max_steps=-5 must be >= -1 (-1: train for num_train_epochs).\n"
    )
