"""examples/generate.py: any processor, no silent random weights, warnings for prompt words the tokenizer lacks."""

import importlib.util
import re
import warnings
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("generate_example", ROOT / "examples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defaults_to_the_shipped_toy_policy(script, tmp_path, capsys):
    paths = script.main(["--prompt", "draw a red dot at the top left .", "--num_steps", "4", "--num_pictures", "2",
                         "--output_dir", str(tmp_path), "--device", "cpu"])  # fmt: skip
    assert all(path.is_file() for path in paths.values())
    reasoning = paths["reasoning"].read_text().strip()
    assert reasoning
    # One label, one meaning: the reasoning under `reasoning:`, the files under `saved:`.
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("reasoning:")] == [f"reasoning: {reasoning}"]
    assert lines[-1] == "saved: " + ", ".join(str(tmp_path / name) for name in ("image.png", "reasoning.txt",
                                                                               "trajectory.png"))  # fmt: skip


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_a_usage_error(script, prompt, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--prompt", prompt, "--device", "cpu"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith("error: --prompt is empty; give the instruction, e.g. --prompt 'draw a red "
                                            "square .'\n")  # fmt: skip


def test_refuses_random_weights_unless_asked(script, tmp_path, monkeypatch):
    import pararl.toy

    monkeypatch.setattr(pararl.toy, "another_processor", pararl.toy.toy_processor, raising=False)
    args = ["--prompt", "draw a red dot .", "--processor", "pararl.toy:another_processor", "--num_steps", "2",
            "--output_dir", str(tmp_path), "--device", "cpu"]  # fmt: skip
    with pytest.raises(ValueError, match="--model_name_or_path is required.*--allow_random_weights"):
        script.main(args)
    assert script.main([*args, "--allow_random_weights"])["image"].is_file()


def test_refuses_a_checkpoint_with_missing_weights(script, tmp_path):
    from safetensors.torch import load_file, save_file

    from pararl.toy.policy import load_toy_policy

    load_toy_policy().save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    state = load_file(str(weights))
    dropped = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != dropped}, str(weights), metadata={"format": "pt"})
    # The loader refuses it before anything could be initialised at random, naming the missing key.
    with pytest.raises(ValueError, match=rf"1 missing key\(s\) \[{re.escape(dropped)}\]"):
        script.main(["--prompt", "draw a red dot .", "--model_name_or_path", str(tmp_path / "model"),
                     "--output_dir", str(tmp_path / "out"), "--device", "cpu"])  # fmt: skip


def test_warns_on_out_of_vocabulary_words(script):
    from pararl.toy import load_toy_tokenizer

    tokenizer = load_toy_tokenizer()
    with pytest.warns(UserWarning, match=r"does not know.*\['zebra', 'Magenta'\]"):
        assert script.warn_unknown_words(tokenizer, "paint the zebra Magenta dot red .") == ["zebra", "Magenta"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert script.warn_unknown_words(tokenizer, "paint the green dot red .") == []
