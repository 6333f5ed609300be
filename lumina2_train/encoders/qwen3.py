"""Z-Image's text encoder from local files: a transformers Qwen3 (Qwen3Model / Qwen3ForCausalLM) + its tokenizer.

Features as diffusers' ZImagePipeline and ComfyUI's Z-Image CLIP make them: the prompt (already in the Qwen chat
template, recipe.format_prompt) tokenized with nothing added (no BOS), cut at ZIMAGE_MAX_TOKENS, right-padded;
hidden_states[-2] (the input of the last layer, no final norm), only the attention-masked tokens. No ComfyUI
imports.
"""

from __future__ import annotations

import torch

from ..errors import ModelError
from ..recipe import ZIMAGE, ZIMAGE_MAX_TOKENS

QWEN3_MODEL_TYPE = "qwen3"


class HFQwen3TextEncoder:
    """Qwen3 features: hidden_states[-2] of the tokens as given (no BOS), right padding, masked tokens dropped."""

    family = ZIMAGE

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu"):
        model_type = getattr(model.config, "model_type", None)
        if model_type != QWEN3_MODEL_TYPE:
            raise ModelError(f"model.text_encoder: a '{model_type}' model where Z-Image's Qwen3 is expected. Give "
                             "the Qwen3-4B folder (Z-Image's text_encoder/).")
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def tokenize(self, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> input_ids (B, L) and attention_mask (B, L): the tokens as written, cut at min(max_tokens, 512)."""
        limit = min(max_tokens, ZIMAGE_MAX_TOKENS)
        rows = [list(r)[:limit] for r in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        return ids, mask

    def encode(self, texts: list[str], max_tokens: int) -> list[torch.Tensor]:
        """Per text an unpadded (L_i, D) float32 CPU tensor.

        Raises:
            ModelError: a text gives no token at all (the template always gives some; a bare "" gives none).
        """
        ids, mask = self.tokenize(texts, max_tokens)
        lengths = mask.sum(1).tolist()
        if 0 in lengths:
            raise ModelError(f"model.text_encoder: the prompt {texts[lengths.index(0)]!r} has no token. Z-Image "
                             "prompts are given in its chat template (recipe.format_prompt with family 'zimage').")
        with torch.no_grad():
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             output_hidden_states=True, use_cache=False)
        feats = out.hidden_states[-2]  # (B, L, D)
        return [feats[i, :n].float().cpu().clone() for i, n in enumerate(lengths)]


def load_qwen3(te_dir, tok_dir, device, dtype: torch.dtype) -> HFQwen3TextEncoder:
    """Qwen3Model from a Qwen3Model or Qwen3ForCausalLM folder (AutoModel drops the LM head), its tokenizer."""
    import transformers
    from packaging.version import Version
    from transformers import AutoModel, AutoTokenizer

    from ..files.weights_errors import naming, require_all_weights

    kw = {"dtype": dtype} if Version(transformers.__version__) >= Version("4.56") else {"torch_dtype": dtype}
    with naming("model.tokenizer", tok_dir):
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    with naming("model.text_encoder", te_dir):
        model, info = AutoModel.from_pretrained(str(te_dir), local_files_only=True, output_loading_info=True, **kw)
    require_all_weights("model.text_encoder", te_dir, info)  # transformers would leave them random
    return HFQwen3TextEncoder(model.to(device).eval(), tokenizer, device)


__all__ = ["HFQwen3TextEncoder", "QWEN3_MODEL_TYPE", "load_qwen3"]
