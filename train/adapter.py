"""Inspect a saved LoRA adapter: the guard against the empty-adapter failure.

Under ZeRO-3 each rank holds only a slice of every parameter; several library
versions have saved those empty slices as the adapter. A LoRA adapter is also
useless if every `lora_B` is still zero (its initial value): then training never
reached it. Both are checked from the file on disk, not from memory.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from common.cli import UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class EmptyAdapterError(UserError):
    pass


def check_adapter(directory: str | Path, *, require_trained: bool = True) -> dict:
    """Return {tensors, elements, lora_b_max_abs}; raise if empty or untrained."""
    path = Path(directory, ADAPTER_WEIGHTS)
    if not path.is_file():
        raise EmptyAdapterError(f"{directory}: no {ADAPTER_WEIGHTS}")
    tensors = elements = 0
    lora_b_max = 0.0
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                tensor = handle.get_tensor(key)
                tensors += 1
                elements += tensor.numel()
                if "lora_B" in key and tensor.numel():
                    lora_b_max = max(lora_b_max, float(tensor.abs().max()))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise EmptyAdapterError(f"{path}: cannot be read as safetensors ({err})") from err
    if elements == 0:
        raise EmptyAdapterError(
            f"{path} holds {tensors} tensors with 0 elements: the ZeRO-3 shards were saved "
            "instead of the gathered weights. Keep `stage3_gather_16bit_weights_on_model_save: "
            "true` in the DeepSpeed config."
        )
    if require_trained and lora_b_max == 0.0:
        raise EmptyAdapterError(
            f"{path}: every lora_B is zero, so the adapter is a no-op (training did not update it)."
        )
    return {"tensors": tensors, "elements": elements, "lora_b_max_abs": lora_b_max}
