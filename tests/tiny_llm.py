"""A tiny random causal LM with a tokenizer trained in-process: seconds to build, no download."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Step 1: the customer likes lab glass and clean tools.",
    "Step 2: Glassware, Lab supplies; brands Pyrex and Kimble.",
    "Step 3: a 250 ml beaker and a graduated cylinder fit well.",
    "Purchase history, oldest first: 1. Widget number 3 (category: Lab; brand: Brand1)",
] * 20


def tiny_tokenizer(corpus: list[str] = CORPUS):
    """A byte-level BPE tokenizer of 300 tokens trained on `corpus`, with pad/unk/bos/eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def build_tiny_llm(folder: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
