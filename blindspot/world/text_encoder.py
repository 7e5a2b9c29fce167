"""Hand the world CLIP's text tower to diffusers: as a transformers CLIPTextModel with a CLIPTokenizer.

Stable Diffusion conditions its UNet on the last hidden states of a CLIP text transformer. The world
diffusion model does the same with the (frozen) world CLIP text tower, converted here weight by weight,
so that the world pipeline is a stock `StableDiffusionPipeline` that `AutoPipelineForText2Image` loads.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch


def write_clip_tokenizer_files(directory: Path) -> tuple[Path, Path]:
    """Write vocab.json / merges.txt equivalent to open_clip's bundled BPE tokenizer (no download)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    directory.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]  # as open_clip's SimpleTokenizer
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_file, merges_file


def clip_tokenizer(context_length: int, workdir: Path):
    """A transformers CLIPTokenizer that splits text exactly like open_clip's tokenizer."""
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_clip_tokenizer_files(workdir)
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=context_length)


def open_clip_text_to_transformers(model: torch.nn.Module):
    """Copy an open_clip CLIP text tower into an equivalent transformers CLIPTextModel."""
    from transformers import CLIPTextConfig, CLIPTextModel

    blocks = model.transformer.resblocks
    width = model.token_embedding.weight.shape[1]
    first = blocks[0]
    act = type(first.mlp.gelu).__name__
    if act not in ("GELU", "QuickGELU"):
        raise ValueError(f"unsupported activation {act} in the open_clip text tower")
    config = CLIPTextConfig(
        vocab_size=model.token_embedding.weight.shape[0],
        hidden_size=width,
        intermediate_size=first.mlp.c_fc.out_features,
        projection_dim=model.text_projection.shape[1],
        num_hidden_layers=len(blocks),
        num_attention_heads=first.attn.num_heads,
        max_position_embeddings=model.positional_embedding.shape[0],
        hidden_act="gelu" if act == "GELU" else "quick_gelu",
        layer_norm_eps=model.ln_final.eps,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    hf = CLIPTextModel(config)
    sd = {
        "text_model.embeddings.token_embedding.weight": model.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": model.positional_embedding,
        "text_model.final_layer_norm.weight": model.ln_final.weight,
        "text_model.final_layer_norm.bias": model.ln_final.bias,
    }
    for i, block in enumerate(blocks):
        p = f"text_model.encoder.layers.{i}."
        q, k, v = block.attn.in_proj_weight.chunk(3)
        qb, kb, vb = block.attn.in_proj_bias.chunk(3)
        sd.update({
            p + "self_attn.q_proj.weight": q, p + "self_attn.q_proj.bias": qb,
            p + "self_attn.k_proj.weight": k, p + "self_attn.k_proj.bias": kb,
            p + "self_attn.v_proj.weight": v, p + "self_attn.v_proj.bias": vb,
            p + "self_attn.out_proj.weight": block.attn.out_proj.weight,
            p + "self_attn.out_proj.bias": block.attn.out_proj.bias,
            p + "layer_norm1.weight": block.ln_1.weight, p + "layer_norm1.bias": block.ln_1.bias,
            p + "layer_norm2.weight": block.ln_2.weight, p + "layer_norm2.bias": block.ln_2.bias,
            p + "mlp.fc1.weight": block.mlp.c_fc.weight, p + "mlp.fc1.bias": block.mlp.c_fc.bias,
            p + "mlp.fc2.weight": block.mlp.c_proj.weight, p + "mlp.fc2.bias": block.mlp.c_proj.bias,
        })
    if not any(k.startswith("text_model.") for k in hf.state_dict()):  # transformers >= 5 drops the prefix
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    missing, unexpected = hf.load_state_dict({k: v.detach().clone().float() for k, v in sd.items()}, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        raise RuntimeError(f"text tower conversion incomplete: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def open_clip_hidden_states(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Last hidden states (after the final layer norm) of an open_clip text tower, for checking conversions."""
    x = model.token_embedding(tokens) + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    return model.ln_final(x)
