"""Build deterministic tiny models for tests and the demo (no hub access needed).

    python -m data.tiny_models --out runs/tiny

writes `OUT/t5` (T5 with UL2's structural choices: gated-SiLU feed-forward, untied
embeddings, relative attention) and `OUT/llama` (a decoder-only Llama). Both share
one byte-level BPE vocabulary trained here with `tokenizers` on synthetic CoNaLa
text; each directory loads with `AutoTokenizer` / `AutoModelFor*`.

The tokenizers differ only in their special-token template, as the real families
do: T5 appends `</s>` to every sequence, Llama prepends `<s>`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from data.fixtures import write_fixtures
from data.loaders import iter_mined, load_curated

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<s>"]
PAD, EOS, UNK, BOS = range(4)
VOCAB_SIZE = 2048


def corpus(fixture_dir: Path) -> list[str]:
    """All intent, snippet and rewritten_intent text of the fixture files."""
    train = load_curated(str(fixture_dir / "conala-train.json"))
    texts = []
    for column in ("intent", "snippet", "rewritten_intent"):
        texts += [t for t in train.column(column).to_pylist() if t]
    for batch in iter_mined(str(fixture_dir / "conala-mined.jsonl")):
        for column in ("intent", "snippet"):
            texts += [t for t in batch.column(column).to_pylist() if t]
    return texts


def train_tokenizer(texts: list[str]) -> Tokenizer:
    # Byte-level BPE never produces <unk> and keeps newlines and braces, unlike the
    # real T5 sentencepiece vocabulary; data.stats reports that difference.
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def wrap(tokenizer: Tokenizer, *, template: str, **special) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template,
        pair=f"{template} $B:1",
        special_tokens=[("</s>", EOS), ("<s>", BOS)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="</s>",
        **special,
    )


def build_t5(vocab_size: int) -> T5ForConditionalGeneration:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=128,
        d_kv=32,
        d_ff=256,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj="gated-silu",
        tie_word_embeddings=False,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
    )
    model = T5ForConditionalGeneration(config)
    # transformers 5 builds every T5 with its head tied to the embeddings and unties
    # only when a checkpoint holds two different tensors, as UL2's does. Give the head
    # its own weights so the saved file has UL2's layout. Scaled by d_model**-0.5 (what
    # tied T5 does in forward) so a random model's loss starts near ln(vocab).
    model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach() * config.d_model**-0.5)
    model.all_tied_weights_keys.pop("lm_head.weight", None)
    return model


def build_llama(vocab_size: int) -> LlamaForCausalLM:
    # head_dim 64: vLLM's CPU attention backend rejects smaller heads.
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        # Wider than Llama's 0.02: at this size, the default leaves random features so
        # faint that LoRA on top of them barely learns in a test-length run.
        initializer_range=0.1,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return LlamaForCausalLM(config)


def build(out: Path, *, seed: int = 0) -> dict[str, Path]:
    """Write OUT/t5 and OUT/llama; return their paths."""
    with tempfile.TemporaryDirectory() as tmp:
        write_fixtures(tmp, seed=seed)
        base_tokenizer = train_tokenizer(corpus(Path(tmp)))
    tokenizers_by_kind = {
        "t5": wrap(base_tokenizer, template="$A </s>"),
        "llama": wrap(base_tokenizer, template="<s> $A", bos_token="<s>"),
    }
    builders = {"t5": build_t5, "llama": build_llama}
    paths = {}
    for kind, builder in builders.items():
        torch.manual_seed(seed)
        tokenizer = tokenizers_by_kind[kind]
        model = builder(len(tokenizer))
        model.generation_config = GenerationConfig(
            **{k: getattr(model.config, k, None) for k in _GENERATION_KEYS}, max_new_tokens=64
        )
        paths[kind] = out / kind
        model.save_pretrained(paths[kind])
        tokenizer.save_pretrained(paths[kind])
    return paths


_GENERATION_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and corpus")
    args = parser.parse_args(argv)
    for kind, path in build(args.out, seed=args.seed).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
