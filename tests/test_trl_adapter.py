"""The TRL internals adapter (`pararl/grpo/trainer.py`, `TRL_INTERNALS` and `_TRLAdapter`): every private name of TRL's
`GRPOTrainer` pararl relies on still exists in the installed TRL and still means what the adapter assumes, and no other
part of the trainer touches TRL's private state. A TRL upgrade that renames one fails here, naming it."""

import ast
import inspect
import re
from pathlib import Path

import pytest
import trl
from trl import GRPOTrainer

from pararl.grpo import trainer as trainer_module
from pararl.grpo.trainer import TRL_INTERNALS


TRAINER_FILE = Path(trainer_module.__file__)
GRPO_INIT_SOURCE = inspect.getsource(GRPOTrainer.__init__)
# What the adapter assumes each piece of TRL code does with the private state (a fragment of its source each).
CONTRACTS = {
    "_compute_loss": ("self.use_vllm", 'inputs["importance_sampling_ratio"]'),
    "_prepare_inputs": ("self._step", "self._buffered_inputs"),
    "_log_metric": ("self._pending_metrics",),
    "_log_completion_extra": ("self._pending_extra_logs",),
    "_generate_and_score_completions": ("self._pending_metrics", "self._pending_extra_logs", 'self._logs["extra"]'),
}


def _set_in_grpo_init(name: str) -> bool:
    return re.search(rf"self\.{re.escape(name)}\s*(:[^=\n]*)?=(?!=)", GRPO_INIT_SOURCE) is not None


def _touches_trl(name: str) -> bool:
    return hasattr(GRPOTrainer, name) or _set_in_grpo_init(name)


@pytest.mark.parametrize(("name", "use"), TRL_INTERNALS, ids=[name for name, _ in TRL_INTERNALS])
def test_installed_trl_still_has_the_name(name, use):
    if use == "state":
        assert _set_in_grpo_init(name), (
            f"TRL {trl.__version__}: GRPOTrainer.__init__ no longer sets `self.{name}`, which pararl's TRL adapter "
            f"(pararl/grpo/trainer.py, TRL_INTERNALS) reads or writes: find its new name and update the adapter."
        )
    else:
        assert hasattr(GRPOTrainer, name), (
            f"TRL {trl.__version__}: GRPOTrainer has no `{name}` ({use}), which pararl's TRL adapter "
            f"(pararl/grpo/trainer.py, TRL_INTERNALS) relies on: find its new name and update the adapter."
        )


@pytest.mark.parametrize("method", list(CONTRACTS))
def test_trl_code_uses_the_state_as_the_adapter_assumes(method):
    source = inspect.getsource(getattr(GRPOTrainer, method))
    for fragment in CONTRACTS[method]:
        assert fragment in source, (
            f"TRL {trl.__version__}: GRPOTrainer.{method} no longer contains `{fragment}`; pararl's TRL adapter "
            f"(pararl/grpo/trainer.py) assumes it does: check what the adapter's use of it means now."
        )


def _adapter_lines(tree: ast.Module) -> range:
    (adapter,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "_TRLAdapter"]
    return range(adapter.lineno, adapter.end_lineno + 1)


def test_trl_private_state_is_touched_only_in_the_adapter():
    tree = ast.parse(TRAINER_FILE.read_text())
    inside = _adapter_lines(tree)
    adapted = {name for name, use in TRL_INTERNALS if use in ("state", "call")}
    outside = [
        f"line {node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in adapted and node.lineno not in inside
    ]
    assert not outside, f"TRL private state used outside the adapter section (_TRLAdapter): {outside}"


def test_every_private_trl_name_the_trainer_uses_is_listed():
    listed = {name for name, _ in TRL_INTERNALS}
    used = set()
    for path in TRAINER_FILE.parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                used.add(node.attr)
            if isinstance(node, ast.FunctionDef) and node.name.startswith("_") and not node.name.startswith("__"):
                used.add(node.name)  # an override of a private TRL method
    unlisted = sorted(name for name in used if _touches_trl(name) and name not in listed)
    assert not unlisted, f"pararl/grpo uses TRL private names missing from TRL_INTERNALS: {unlisted}"


def test_adapter_accessors_reach_trls_state(make_grpo_config, make_trainer, tmp_path):
    args = make_grpo_config(tmp_path, diffusion_steps=4, num_reward_steps=2)
    trainer = make_trainer(args, lambda completions, **kw: [0.0] * len(completions))
    assert trainer._micro_step == trainer._step == 0
    trainer._micro_step = 3
    assert trainer._step == 3
    assert trainer._buffered_rows is trainer._buffered_inputs is None
    trainer._buffered_rows = [{}]
    assert trainer._buffered_inputs == [{}]
    assert trainer._metric_lists("train") is trainer._metrics["train"]
    extras = trainer._reward_extras()
    extras["log_metric"]("my_metric", 1.0)
    extras["log_extra"]("my_column", [1, 2])
    assert list(trainer._pending_metrics["my_metric"]) == [1.0]
    assert list(trainer._pending_extra_logs["my_column"]) == [1, 2]
    trainer._discard_reward_logs()
    assert not trainer._pending_metrics and not trainer._pending_extra_logs
    assert {"images", "prompt", "completion", "advantages", "rewards", "extra"} <= set(trainer._logs)
    assert trainer._logs["prompt"].maxlen == args.generation_batch_size * args.num_reward_steps
    assert trainer._checkpoint_folder(None) == str(tmp_path / "checkpoint-0")
