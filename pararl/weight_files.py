"""Weight-file helpers: find a checkpoint's (sharded) weight files, read their keys and shapes from the headers, load
them, and compare them with what a model expects before anything is loaded.

A leaf module (torch and safetensors only): the policy model's loaders, the image tokenizers' loaders and the
trainers' resume checks all use it. A missing, unexpected or mis-shaped key is a `ValueError` that lists them;
nothing is ever initialised at random.
"""

import json
import os
from collections.abc import Iterable, Mapping

import torch


__all__ = [
    "MODEL_WEIGHT_NAMES",
    "check_resume_checkpoint",
    "check_weight_shapes",
    "find_weight_files",
    "read_state_dict",
    "read_weight_shapes",
]

# Weight files of a transformer checkpoint, in order of preference; each may also come sharded with an index
# (`model.safetensors.index.json`).
MODEL_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
# How many keys an error message lists per category before it says "and N more".
_MAX_LISTED = 20


def find_weight_files(directory: str | os.PathLike, names: Iterable[str] = MODEL_WEIGHT_NAMES) -> list[str]:
    """The weight files of a checkpoint folder: the first of `names` found, as a single file or as the shards its
    `<name>.index.json` lists (safetensors are preferred to pickles by the order of `names`).

    Raises:
        FileNotFoundError: None of the files exists, or an index names a shard that does not.
    """
    directory = os.fspath(directory)
    names = tuple(names)
    for name in names:
        index_path = os.path.join(directory, name + ".index.json")
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index_path} has no 'weight_map' (key -> shard file); the index is broken.")
            shards = sorted(set(weight_map.values()))
            absent = [shard for shard in shards if not os.path.isfile(os.path.join(directory, shard))]
            if absent:
                raise FileNotFoundError(f"{index_path} lists shard files that are not in {directory!r}: {absent}.")
            return [os.path.join(directory, shard) for shard in shards]
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return [path]
    raise FileNotFoundError(
        f"no weights in {directory!r}: looked for {', '.join(names)} (or their sharded `.index.json` form)."
    )


def _index_map(files: list[str]) -> dict[str, str] | None:
    """The `weight_map` of the index next to sharded `files`, if there is one."""
    directory = os.path.dirname(files[0])
    for name in os.listdir(directory):
        if name.endswith(".index.json"):
            with open(os.path.join(directory, name)) as f:
                weight_map = json.load(f).get("weight_map") or {}
            if {os.path.join(directory, v) for v in weight_map.values()} == set(files):
                return weight_map
    return None


def _read_file(path: str, shapes_only: bool) -> dict:
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                if shapes_only:
                    return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
                return {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"cannot read the weight file {path} ({error}); it is probably truncated or corrupt (an interrupted "
                "download or save): copy or save it again."
            ) from error
    # Pickled state dicts: weights only (no code execution), memory-mapped so that reading shapes is cheap (old,
    # non-zip pickles cannot be memory-mapped and are read whole).
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(
            f"cannot read the weight file {path} ({error}); it is probably truncated or corrupt: copy or save it again."
        ) from error
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if shapes_only:
        return {key: tuple(value.shape) for key, value in state.items()}
    return dict(state)


def _read_all(files: list[str], shapes_only: bool) -> dict:
    found: dict = {}
    owner: dict[str, str] = {}
    for path in files:
        for key, value in _read_file(path, shapes_only).items():
            if key in found:
                raise ValueError(f"weight {key!r} appears in two files: {owner[key]} and {path}.")
            found[key], owner[key] = value, path
    if len(files) > 1:
        weight_map = _index_map(files)
        if weight_map is not None:
            directory = os.path.dirname(files[0])
            wrong = sorted(k for k, shard in weight_map.items() if owner.get(k) != os.path.join(directory, shard))
            if wrong:
                raise ValueError(
                    f"the index in {directory!r} maps {len(wrong)} key(s) to shards that do not hold them: "
                    f"{_listed(wrong)}."
                )
    return found


def read_weight_shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of every tensor in `files`, read from the safetensors headers (no tensor is loaded)."""
    return _read_all(files, shapes_only=True)


def read_state_dict(files: list[str]) -> dict[str, torch.Tensor]:
    """All tensors of `files` in one state dict (safetensors, or pickles loaded with `weights_only=True`)."""
    return _read_all(files, shapes_only=False)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return f"[{shown}]" + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def check_weight_shapes(
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    source: str,
    optional: Mapping[str, tuple[int, ...]] | None = None,
    hint: str = "Nothing was loaded; check that the folder holds the checkpoint its config.json describes.",
) -> None:
    """Compares a checkpoint's `{key: shape}` with the model's; raises one `ValueError` listing every missing key,
    unexpected key and wrong shape, then `hint`. Keys in `optional` may be absent but must have that shape when
    present."""
    optional = dict(optional or {})
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected and k not in optional)
    wanted = {**optional, **expected}
    wrong = sorted(
        f"{k}: checkpoint {tuple(found[k])} vs model {tuple(wanted[k])}"
        for k in found
        if k in wanted and tuple(found[k]) != tuple(wanted[k])
    )
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) {_listed(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} wrong shape(s) {_listed(wrong)}")
    raise ValueError(f"the weights in {source} do not fit the model: {'; '.join(parts)}. {hint}")


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def check_resume_checkpoint(model: torch.nn.Module, checkpoint: str | os.PathLike) -> None:
    """Checks a Trainer checkpoint folder against the model it is about to be loaded into, before it is.

    `Trainer` resumes with a non-strict load: a full model's missing keys are only logged, and a PEFT adapter's
    missing keys are dropped silently (PEFT reports them, `Trainer` ignores the report), so the resumed run would
    train from freshly initialised adapter weights. Here every key the model expects must be in the files with the
    model's shape, and no key may be left over.

    Args:
        model: The (unwrapped) model, a `PeftModel` or a [`MaskedDiffusionLM`].
        checkpoint: The `checkpoint-N` folder.

    Raises:
        ValueError: Missing, unexpected or mis-shaped keys (listed), or an unreadable weight file (named).
        FileNotFoundError: The folder holds no weights for the model.
    """
    from transformers.utils import is_peft_available

    checkpoint = os.fspath(checkpoint)
    hint = "Nothing was loaded; resume from a checkpoint of this model and adapter configuration."
    if is_peft_available():
        from peft import PeftModel, get_peft_model_state_dict
    if not is_peft_available() or not isinstance(model, PeftModel):
        files = find_weight_files(checkpoint, MODEL_WEIGHT_NAMES)
        check_weight_shapes(read_weight_shapes(files), _shapes(model.state_dict()), source=checkpoint, hint=hint)
        return
    names = ("adapter_model.safetensors", "adapter_model.bin")
    # As `Trainer._load_from_checkpoint` maps them: with adapter sub-folders the top-level files are "default".
    subfolders = [name for name in model.peft_config if os.path.isdir(os.path.join(checkpoint, name))]
    top = "default" if subfolders else model.active_adapter
    targets = {top: checkpoint, **{name: os.path.join(checkpoint, name) for name in subfolders if name != top}}
    for adapter, folder in targets.items():
        if adapter not in model.peft_config:
            continue
        try:
            files = find_weight_files(folder, names)
        except FileNotFoundError:
            if adapter == top and not subfolders:
                raise
            continue
        expected = _shapes(get_peft_model_state_dict(model, adapter_name=adapter))
        source = f"{folder} (adapter {adapter!r})"
        check_weight_shapes(read_weight_shapes(files), expected, source=source, hint=hint)
