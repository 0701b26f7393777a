"""What the example scripts share: strict command lines (whole flag names only, the closest flag for a typo), one
clean line for a usage error, and TRL's way of loading `--dataset_name`.

argparse accepts any unambiguous prefix of a flag (`--num_rew 2` sets `--num_reward_steps`), so a flag added later
can silently change what an old command means, and a typo only gets "unrecognized arguments". The scripts build
their parsers with `allow_abbrev=False` and call [`check_flags`] before parsing, which names the closest flags (of
the command line and of the `--config` YAML file alike). [`parse_command_line`] then parses with every usage error
(a value that does not parse, a setting a config's `__post_init__` refuses) as one line and exit status 2, like
argparse's own errors but without a usage text hundreds of flags long.

Both scripts also share the rule of their toy defaults ([`apply_toy_defaults`]: only when no flag of
[`REAL_RUN_FLAGS`] is given) and their LoRA adapter for a masked-diffusion model ([`diffusion_peft_config`]).
"""

import argparse
import difflib
import functools
import os
from collections.abc import Sequence
from typing import NoReturn


__all__ = [
    "REAL_RUN_FLAGS",
    "announce_defaults",
    "apply_toy_defaults",
    "check_flags",
    "diffusion_peft_config",
    "given_options",
    "load_script_datasets",
    "parse_command_line",
    "usage_error",
]


def _long_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """`--flag` -> its destination, for every long option of the parser (TrlParser's `--config` included)."""
    flags = {option: action.dest for option, action in parser._option_string_actions.items() if option[:2] == "--"}
    flags.setdefault("--config", "config")
    return flags


def usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exits as `parser.error` does (status 2, `prog: error: message`), without its usage text: the example scripts
    have hundreds of flags, and `--help` lists them."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def _one_per_option(candidates: list[str], flags: dict[str, str]) -> list[str]:
    """The first spelling of each option (`--num_reward_steps`, not also its alias `--num-reward-steps`)."""
    seen, kept = set(), []
    for flag in sorted(candidates, key=lambda flag: "-" in flag[2:]):  # stable: underscore spellings first
        if flags[flag] not in seen:
            seen.add(flags[flag])
            kept.append(flag)
    return kept


def check_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Exits (status 2, like argparse) on the first `--flag` the parser does not know, naming the known flags it
    abbreviates or, for a typo, the closest ones."""
    flags = _long_flags(parser)
    for token in argv:
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        if name in flags:
            continue
        longer = _one_per_option(sorted(flag for flag in flags if flag.startswith(name)), flags)
        if longer:
            usage_error(
                parser,
                f"{name} is not a flag; abbreviations are not accepted, write the whole name: "
                f"{' or '.join(longer[:5])}",
            )
        close = _one_per_option(difflib.get_close_matches(name, list(flags), n=6, cutoff=0.6), flags)[:3]
        hint = f"; did you mean {' or '.join(close)}?" if close else " (see --help)"
        usage_error(parser, f"unrecognized flag {name}{hint}")
    _check_config_keys(parser, argv, flags)


def _check_config_keys(parser: argparse.ArgumentParser, argv: Sequence[str], flags: dict[str, str]) -> None:
    """The keys of the `--config` YAML file (TrlParser's) are flags too: an unknown one gets the closest key."""
    path = _config_path(argv)
    if path is None:
        return
    config = _read_config(parser, path)
    for key in config:
        if key == "env" or f"--{key}" in flags:
            continue
        keys = {flag[2:]: dest for flag, dest in flags.items()}
        close = [f"--{k}" for k in difflib.get_close_matches(str(key), list(keys), n=6, cutoff=0.6)]
        close = [flag[2:] for flag in _one_per_option(close, flags)[:3]]
        hint = f"; did you mean {' or '.join(close)}?" if close else " (see --help for the flags it may set)"
        usage_error(parser, f"{path}: unknown key {key}{hint}")


def _config_path(argv: Sequence[str]) -> str | None:
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def _read_config(parser: argparse.ArgumentParser, path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except OSError as error:
        usage_error(parser, f"--config {path}: {error.strerror}")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        usage_error(parser, f"--config {path} is not valid YAML ({getattr(error, 'problem', None) or error}{where})")
    if config is None:
        return {}
    if not isinstance(config, dict):
        usage_error(
            parser, f"--config {path} must hold a mapping of flag names to values, got {type(config).__name__}"
        )
    return config


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]):
    """`parser.parse_args_and_config(argv)` (a TrlParser) or `parser.parse_args(argv)`, with every usage error as one
    line and exit status 2: argparse's own (a value that does not parse: no usage text) and the `ValueError` of a
    config's `__post_init__` (a setting out of range: no traceback)."""
    parser.error = functools.partial(usage_error, parser)  # argparse's documented hook for its errors
    try:
        if hasattr(parser, "parse_args_and_config"):
            return parser.parse_args_and_config(list(argv))
        return parser.parse_args(list(argv))
    except ValueError as error:
        usage_error(parser, str(error))


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations set on the command line or in the `--config` YAML file (TrlParser's), e.g. to know whether a
    script-level default was overridden."""
    flags = _long_flags(parser)
    given = {flags[name] for name in (token.split("=", 1)[0] for token in argv) if name in flags}
    path = _config_path(argv)
    if path is not None and os.path.isfile(path):
        given.update(key for key in _read_config(parser, path) if key != "env")
    return given


# Flags that make a run a real one (its own model or data): then no toy default applies.
REAL_RUN_FLAGS = ("model_name_or_path", "dataset_name")


def apply_toy_defaults(parser: argparse.ArgumentParser, argv: Sequence[str], toy_defaults: dict) -> dict:
    """Sets `toy_defaults` as the parser's defaults when `argv` (with its `--config` file) gives none of
    `REAL_RUN_FLAGS`, i.e. for the toy world; returns the toy defaults that apply (those that `argv` and its
    `--config` do not override), `{}` for a real run, which keeps the configs' (TRL's) defaults."""
    given = given_options(parser, argv)
    if given & set(REAL_RUN_FLAGS):
        return {}
    parser.set_defaults(**toy_defaults)
    return {key: value for key, value in toy_defaults.items() if key not in given}


def announce_defaults(toy_defaults: dict) -> None:
    """Says (on the main process only) whether a script's toy defaults applied, and which, or that a real run keeps
    TRL's defaults for every flag it does not give."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if toy_defaults:
        applied = ", ".join(f"{key}={value}" for key, value in toy_defaults.items())
        print(f"Toy world (no --model_name_or_path / --dataset_name): toy defaults applied: {applied}")
    else:
        print("Real run (--model_name_or_path or --dataset_name given): TRL's defaults for every flag not given.")


def load_script_datasets(script_args) -> tuple:
    """`(train, test)` splits of `--dataset_name` (a `save_to_disk` folder or a Hub id), loaded as TRL's scripts load
    them: `--dataset_config`, `--dataset_streaming`, `--dataset_train_split` / `--dataset_test_split` (test is None
    where the dataset has no such split). `script_args` is a `trl.ScriptArguments`."""
    import datasets

    if script_args.ignore_bias_buffers:
        raise ValueError("--ignore_bias_buffers (TRL's DDP fix for boolean buffers) has no use here; remove it.")
    if os.path.isdir(script_args.dataset_name):
        dataset = datasets.load_from_disk(script_args.dataset_name)
    else:
        dataset = datasets.load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
    if isinstance(dataset, datasets.Dataset | datasets.IterableDataset):
        dataset = {script_args.dataset_train_split: dataset}
    train, test = dataset[script_args.dataset_train_split], dataset.get(script_args.dataset_test_split)
    if script_args.dataset_streaming and isinstance(train, datasets.Dataset):  # saved with save_to_disk
        train, test = (None if part is None else part.to_iterable_dataset() for part in (train, test))
    return train, test


def diffusion_peft_config(model_args):
    """TRL's `get_peft_config(model_args)` for a masked-diffusion model (None without `use_peft`): no task type (it is
    no causal LM, so the plain `PeftModel` passes every forward argument through) and, unless `lora_target_modules`
    names others, the attention projections. `model_args` is a `trl.ModelConfig`."""
    from trl import get_peft_config

    from .models import ATTENTION_LORA_TARGETS

    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        peft_config.task_type = None
        if model_args.lora_target_modules is None:
            peft_config.target_modules = list(ATTENTION_LORA_TARGETS)
    return peft_config
