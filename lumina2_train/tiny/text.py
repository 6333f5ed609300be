"""A tiny Gemma2 text encoder and a sentencepiece tokenizer trained in code. Nothing is downloaded.

The tokenizer is a real sentencepiece BPE model with Gemma's special ids (pad 0, eos 1, bos 2, unk 3)
and byte fallback, so any text tokenizes. Its `.model` bytes are what ComfyUI stores as `spiece_model`.
The encoder is a transformers Gemma2Model whose width equals the tiny DiT's cap_feat_dim.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import torch

from ..recipe import SYSTEM_PROMPT_TEXT
from . import TINY_DIT

TINY_VOCAB = 384
TINY_TEXT = dict(
    vocab_size=TINY_VOCAB, hidden_size=TINY_DIT["cap_feat_dim"], intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
    sliding_window=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
)
_CORPUS = (
    "a photo of a cat sitting on a red chair in the sun",
    "a painting of a small house near the river at sunset, oil on canvas",
    "a dog running on the beach, blue sky, white clouds, waves",
    "1girl, solo, smiling, long hair, looking at viewer, upper body, masterpiece, best quality",
    "portrait of an old man with a grey beard, studio lighting, black background",
    "a bowl of fruit on a wooden table: apples, pears and green grapes",
    "the city at night with bright lights and tall buildings in the rain",
    "a tree in a field, winter morning, snow, fog, soft light",
    "0 1 2 3 4 5 6 7 8 9 10 20 50 100 1024",
    "<Prompt Start> <Prompt Start> you are an assistant",
)


def tiny_spiece_model(extra_corpus: tuple[str, ...] = (), vocab_size: int = TINY_VOCAB) -> bytes:
    """Train the tiny sentencepiece BPE model on the built-in corpus (plus `extra_corpus`, so that its words
    become whole tokens instead of letters); deterministic, well under a second."""
    import sentencepiece as spm

    corpus = [*SYSTEM_PROMPT_TEXT.values(), *_CORPUS] * 8 + [*extra_corpus] * 32
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=out, vocab_size=vocab_size, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", byte_fallback=True, character_coverage=1.0, num_threads=1, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, user_defined_symbols=["<mask>"], minloglevel=2,  # <mask> = 4 as in Gemma
    )
    return out.getvalue()


def make_tiny_tokenizer(directory: str | Path, extra_corpus: tuple[str, ...] = (), vocab_size: int = TINY_VOCAB):
    """Write the tiny tokenizer (trained on `extra_corpus` too) into `directory` (tokenizer.model + the
    transformers files) and return it.

    The folder then loads offline with `AutoTokenizer.from_pretrained(directory)`.
    """
    from transformers import GemmaTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_file = directory / "tokenizer.model"
    model_file.write_bytes(tiny_spiece_model(extra_corpus, vocab_size))
    tokenizer = GemmaTokenizer.from_pretrained(str(directory), add_bos_token=True, add_eos_token=False)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def make_tiny_text_encoder(seed: int = 0, vocab_size: int = TINY_VOCAB):
    """A transformers Gemma2Model (2 layers, width 32 = TINY_DIT cap_feat_dim), fp32, eval mode."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(**dict(TINY_TEXT, vocab_size=vocab_size))
    config.architectures = ["Gemma2Model"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma2Model(config)
    return model.eval()


def save_tiny_text_encoder(root: str | Path, seed: int = 0, extra_corpus: tuple[str, ...] = (),
                           vocab_size: int = TINY_VOCAB) -> tuple[Path, Path]:
    """Write `root/text_encoder/` and `root/tokenizer/` (diffusers pipeline layout); returns both folders.
    `extra_corpus` / `vocab_size`: sentences the tokenizer also learns from, and a larger vocabulary for them
    (tiny_spiece_model)."""
    root = Path(root)
    te_dir, tok_dir = root / "text_encoder", root / "tokenizer"
    for folder in (te_dir, tok_dir):  # a stale tokenizer.json would win over the new tokenizer.model
        if folder.exists():
            shutil.rmtree(folder)
    make_tiny_text_encoder(seed, vocab_size).save_pretrained(str(te_dir))
    make_tiny_tokenizer(tok_dir, extra_corpus, vocab_size)
    return te_dir, tok_dir
