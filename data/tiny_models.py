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

# Before the slow imports: it makes a Ctrl-C during them one line.
from common.cli import Parser, check_seed, refuse_existing, run  # isort: skip
import contextlib
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


def build_t5(
    vocab_size: int,
    *,
    d_model: int = 128,
    d_kv: int = 32,
    d_ff: int = 256,
    layers: int = 2,
    heads: int = 4,
    dtype: torch.dtype | None = None,
    device: str | None = None,
) -> T5ForConditionalGeneration:
    """UL2's structure (gated-SiLU, untied head, relative attention) at the given size.

    `dtype`/`device` build the weights there directly (a UL2-sized model in bf16 on a
    GPU never exists in fp32 on the host).
    """
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        feed_forward_proj="gated-silu",
        tie_word_embeddings=False,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
    )
    with _default_dtype(dtype), torch.device(device or "cpu"):
        model = T5ForConditionalGeneration(config)
    # transformers 5 builds every T5 with its head tied to the embeddings and unties
    # only when a checkpoint holds two different tensors, as UL2's does. Give the head
    # its own weights so the saved file has UL2's layout. Scaled by d_model**-0.5 (what
    # tied T5 does in forward) so a random model's loss starts near ln(vocab).
    with torch.no_grad():
        head = model.shared.weight.detach() * config.d_model**-0.5
    model.lm_head.weight = torch.nn.Parameter(head)
    model.all_tied_weights_keys.pop("lm_head.weight", None)
    return model


def build_llama(
    vocab_size: int,
    *,
    hidden: int = 128,
    intermediate: int = 256,
    layers: int = 2,
    heads: int = 2,
    head_dim: int = 64,
) -> LlamaForCausalLM:
    # head_dim 64: vLLM's CPU attention backend rejects smaller heads.
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
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


def tokenizers(seed: int = 0) -> dict[str, PreTrainedTokenizerFast]:
    """The shared vocabulary, trained on the default fixture set of `seed`, per kind."""
    with tempfile.TemporaryDirectory() as tmp:
        write_fixtures(tmp, seed=seed)
        base_tokenizer = train_tokenizer(corpus(Path(tmp)))
    return {
        "t5": wrap(base_tokenizer, template="$A </s>"),
        "llama": wrap(base_tokenizer, template="<s> $A", bos_token="<s>"),
    }


def save(model, tokenizer, path: Path) -> Path:
    """Save `model` with a generation config and `tokenizer`, as a merged model dir."""
    model.generation_config = GenerationConfig(
        **{k: getattr(model.config, k, None) for k in _GENERATION_KEYS}, max_new_tokens=64
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build(
    out: Path, *, seed: int = 0, t5: dict | None = None, llama: dict | None = None
) -> dict[str, Path]:
    """Write OUT/t5 and OUT/llama; return their paths.

    `t5` / `llama`: dimensions for `build_t5` / `build_llama` (default: the tiny ones).
    """
    tokenizers_by_kind = tokenizers(seed)
    builders = {"t5": (build_t5, t5 or {}), "llama": (build_llama, llama or {})}
    paths = {}
    for kind, (builder, dims) in builders.items():
        torch.manual_seed(seed)
        tokenizer = tokenizers_by_kind[kind]
        paths[kind] = save(builder(len(tokenizer), **dims), tokenizer, out / kind)
    return paths


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype | None):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


_GENERATION_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m data.tiny_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and corpus")
    parser.add_argument("--overwrite", action="store_true", help="replace existing models")
    args = parser.parse_args(argv)
    check_seed(args.seed)
    refuse_existing("--out", [args.out / "t5", args.out / "llama"], args.overwrite)
    for kind, path in build(args.out, seed=args.seed).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    run(main, "data.tiny_models")
