"""Tokenize training pairs for either architecture, and account for padding.

Encoder-decoder: the source feeds the encoder and the target becomes `labels`.
Decoder-only: one sequence `prompt + target + eos`, with the prompt's labels set to
-100 so the loss only covers the answer (the model should not learn to write
intents and snippets).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

IGNORE_INDEX = -100


def tokenize(
    sources: list[str],
    targets: list[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    encoder_decoder: bool,
    max_source_length: int,
    max_target_length: int,
) -> Dataset:
    if encoder_decoder:
        features = tokenizer(sources, max_length=max_source_length, truncation=True)
        features["labels"] = tokenizer(
            text_target=targets, max_length=max_target_length, truncation=True
        )["input_ids"]
    else:
        features = _causal_features(
            sources, targets, tokenizer, max_source_length, max_target_length
        )
    # `length` drives the Trainer's length-grouped sampler (then is dropped).
    features["length"] = [len(ids) for ids in features["input_ids"]]
    return Dataset.from_dict(dict(features))


def _causal_features(sources, targets, tokenizer, max_source_length, max_target_length) -> dict:
    prompts = tokenizer(sources, max_length=max_source_length, truncation=True)["input_ids"]
    answers = tokenizer(targets, add_special_tokens=False)["input_ids"]
    input_ids, labels = [], []
    for prompt, answer in zip(prompts, answers):
        answer = answer[: max_target_length - 1] + [tokenizer.eos_token_id]
        input_ids.append(prompt + answer)
        labels.append([IGNORE_INDEX] * len(prompt) + answer)
    return {
        "input_ids": input_ids,
        "attention_mask": [[1] * len(x) for x in input_ids],
        "labels": labels,
    }


@dataclass
class CountingCollator(DataCollatorForSeq2Seq):
    """Pads like `DataCollatorForSeq2Seq` and counts real versus padded tokens.

    Counted over what the model reads: encoder input plus decoder labels for an
    encoder-decoder, the single input sequence for a decoder-only model.
    """

    encoder_decoder: bool = True
    real_tokens: int = 0
    total_tokens: int = 0

    def __call__(self, features, return_tensors=None):
        for feature in features:
            feature.pop("length", None)
        batch = super().__call__(features, return_tensors)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.total_tokens += batch["input_ids"].numel()
        if self.encoder_decoder:
            self.real_tokens += int((batch["labels"] != IGNORE_INDEX).sum())
            self.total_tokens += batch["labels"].numel()
        return batch


def padding_efficiency(
    lengths: list[tuple[int, ...]], batch_size: int, *, grouped: bool, seed: int = 0
) -> float:
    """Non-pad / total tokens over one epoch, for random or length-grouped batches.

    `lengths` holds, per example, the length of each separately padded sequence
    (source and target for an encoder-decoder). Grouping follows the Trainer's
    `LengthGroupedSampler`: shuffle, cut into mega-batches of 50 batches, sort each
    by the first length.
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    if grouped:
        mega = batch_size * 50
        order = [
            i
            for s in range(0, len(order), mega)
            for i in sorted(order[s : s + mega], key=lambda i: -lengths[i][0])
        ]
    real = total = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        for column in zip(*batch):
            real += sum(column)
            total += max(column) * len(column)
    return real / total if total else 1.0
